"""The simulated members' known behaviour: the ground truth the models are judged against.

`redeem_logit` is the true chance that an exposure converts into a redemption, `surfaces` where
a member is shown items (keener redeemers are on the points centre more often), `season` the
purchase rate's yearly wave and campaign days. `recsvc.offline.simulate` draws from them; the
true probabilities go to the oracle directory that no training code reads.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.ml.inputs import SURFACES  # the platform's surfaces, in the models' order

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SURFACE_P = (0.5, 0.3, 0.2)  # the mix of an average member (appetite 0)
# Members with a taste for redeeming open the points centre more often: the log-odds of an
# exposure being there rise by this much per unit of appetite (±1 sd moves the share from 30 %
# to about 16 % / 50 %), the other surfaces keep their ratio. It is the one trace of appetite a
# platform sees besides the redemptions themselves, as real ones see points-centre sessions.
POINTS_CENTRE_APPETITE = 1.2
SURFACE_EFFECT = np.array([0.0, 0.5, 0.2])


def redeem_logit(
    *,
    value_coeff: F64,
    demand: F64,
    behaviour: F64,
    discount: F64,
    expiring_share: F64,
    affordable: npt.NDArray[np.bool_],
    vacuum: npt.NDArray[np.bool_],
    price_sensitivity: F64,
    appetite: F64,
    category_pref: F64,
    surface_effect: F64,
) -> F64:
    """Log-odds that an exposure converts into a redemption.

    Increasing in value per point (steeper for price-sensitive members), demand match,
    behaviour and discount depth; points that are about to expire push members to redeem;
    unaffordable items (points + cash only) and vacuum-zone items are redeemed far less.
    """
    vc = np.maximum(value_coeff, 1e-4)
    return (
        -4.4
        + 1.7 * price_sensitivity * np.log(vc / 0.06)
        + 1.3 * demand
        + 1.6 * (behaviour - 0.5)
        + 2.0 * (1.0 - discount)
        + 1.1 * np.minimum(expiring_share, 1.0)
        + appetite
        + 2.5 * category_pref
        + surface_effect
        - 2.2 * (~affordable)
        - 1.5 * vacuum
    )


def surfaces(rng: np.random.Generator, appetite: F64) -> I64:
    """The surface (index into SURFACES) of each exposure: SURFACE_P, with the points-centre
    share tilted by the member's appetite (POINTS_CENTRE_APPETITE)."""
    base = SURFACE_P[1]
    logit = np.log(base / (1.0 - base)) + POINTS_CENTRE_APPETITE * appetite
    p_centre = 1.0 / (1.0 + np.exp(-logit))
    p_page = (1.0 - p_centre) * SURFACE_P[0] / (SURFACE_P[0] + SURFACE_P[2])
    u = rng.random(len(appetite))
    return np.where(u < p_centre, 1, np.where(u < p_centre + p_page, 0, 2)).astype(np.int64)


def season(days: I64 | int, programme: Programme, start: dt.date) -> F64:
    """Purchase-rate multiplier for day offsets from `start`: a yearly wave and campaign days."""
    d = np.atleast_1d(np.asarray(days, dtype=np.int64))
    ordinal = start.toordinal() + d
    doy = np.array([dt.date.fromordinal(int(o)).timetuple().tm_yday for o in ordinal])
    wave = 1.0 + 0.25 * np.sin(2 * np.pi * (doy - 220) / 365.25)
    mmdd = [dt.date.fromordinal(int(o)).strftime("%m-%d") for o in ordinal]
    campaign = np.array([m in programme.earning.double_points_days for m in mmdd])
    return wave * np.where(campaign, 1.8, 1.0)


__all__ = ["POINTS_CENTRE_APPETITE", "SURFACES", "SURFACE_EFFECT", "SURFACE_P", "redeem_logit",
           "season", "surfaces"]
