"""RFM segments (loyal / potential / dormant / ordinary), churn-risk bands and the action table.

Pure numpy over plain arrays; the thresholds are learned from training data by
`fit_rfm_thresholds`, saved with the churn model (`RfmThresholds.to_dict`) and applied at serving
and batch-scoring time by `segment`, so both use the same cut points.

Inputs, per member, at a cut-off date (the same definitions at fit and at serving time):

- ``recency_days``: days since the last purchase; NaN or +inf when the member never purchased;
- ``frequency``: number of orders in the feature window (e.g. 365 days); 0 when none;
- ``monetary``: spend in the same window, in any fixed unit (NaN counts as 0);
- ``tenure_days``: days since the member joined (NaN when unknown).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, NamedTuple, Self

import numpy as np
import numpy.typing as npt

from recsvc.errors import InvalidArgument

SEGMENTS: tuple[str, ...] = ("loyal", "potential", "dormant", "ordinary")
BANDS: tuple[str, ...] = ("low", "medium", "high")
DEFAULT_BAND_CUTS: tuple[float, float] = (0.3, 0.6)
RULE = "rfm-quantile-v1"

ArrayLike = Any  # float | sequence | ndarray
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RfmThresholds:
    """Cut points learned by `fit_rfm_thresholds`; see `segment` for how they are applied."""

    dormant_recency_days: float
    new_tenure_days: float
    low_frequency: float
    loyal_recency_days: float
    loyal_frequency: float
    loyal_monetary: float
    n_buyers: int = 0
    rule: str = RULE

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, for the model manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InvalidArgument("rfm_thresholds", f"unknown key(s) {sorted(unknown)}")
        if data.get("rule", RULE) != RULE:
            raise InvalidArgument("rfm_thresholds.rule", f"expected {RULE!r}, got {data['rule']!r}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidArgument("rfm_thresholds", str(exc)) from None


def _arr(value: ArrayLike, field: str) -> FloatArray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(field, "must be numeric") from None


def _not_negative(values: FloatArray, field: str) -> None:
    if np.any(values < 0):  # NaN compares False: missing values are allowed here
        raise InvalidArgument(field, "must be >= 0")


def fit_rfm_thresholds(
    recency_days: ArrayLike,
    frequency: ArrayLike,
    monetary: ArrayLike,
    *,
    dormant_quantile: float = 0.8,
    min_dormant_days: float = 60.0,
    recent_quantile: float = 0.5,
    low_frequency_quantile: float = 0.4,
    high_quantile: float = 0.75,
    new_tenure_days: float = 60.0,
) -> RfmThresholds:
    """Learn the cut points from the members of a training snapshot who purchased at least once.

    The rule (``rfm-quantile-v1``), with quantiles taken over buyers only:

    - dormant after ``max(quantile(recency, dormant_quantile), min_dormant_days)`` days without
      a purchase: the longest-idle fifth by default, but never under two months, so that a
      base where everyone is active is not forced to contain dormant members;
    - low frequency: at most ``quantile(frequency, low_frequency_quantile)`` orders (1 on a log
      where most members buy once or twice: the one-time buyers);
    - loyal: recency at most ``quantile(recency, recent_quantile)`` (the more recent half), and
      frequency and spend at least their ``high_quantile`` (the top quarter);
    - new: tenure at most ``new_tenure_days`` (not learned: tenure is a programme notion).
    """
    rec = np.ravel(_arr(recency_days, "recency_days"))
    freq = np.ravel(_arr(frequency, "frequency"))
    mon = np.ravel(_arr(monetary, "monetary"))
    if not (rec.shape == freq.shape == mon.shape):
        raise InvalidArgument("recency_days", "recency, frequency and monetary differ in length")
    _not_negative(rec, "recency_days")
    _not_negative(freq, "frequency")
    for name, q in (
        ("dormant_quantile", dormant_quantile),
        ("recent_quantile", recent_quantile),
        ("low_frequency_quantile", low_frequency_quantile),
        ("high_quantile", high_quantile),
    ):
        if not 0.0 <= q <= 1.0:
            raise InvalidArgument(name, f"must be in [0, 1], got {q}")
    buyer = (freq > 0) & np.isfinite(rec)
    if not buyer.any():
        raise InvalidArgument("frequency", "no member with a purchase to learn thresholds from")
    rec, freq, mon = rec[buyer], freq[buyer], np.nan_to_num(mon[buyer], nan=0.0)
    return RfmThresholds(
        dormant_recency_days=max(float(np.quantile(rec, dormant_quantile)), min_dormant_days),
        new_tenure_days=float(new_tenure_days),
        low_frequency=float(np.quantile(freq, low_frequency_quantile)),
        loyal_recency_days=float(np.quantile(rec, recent_quantile)),
        loyal_frequency=float(np.quantile(freq, high_quantile)),
        loyal_monetary=float(np.quantile(mon, high_quantile)),
        n_buyers=int(buyer.sum()),
    )


def segment(
    thresholds: RfmThresholds,
    recency_days: ArrayLike,
    frequency: ArrayLike,
    monetary: ArrayLike,
    tenure_days: ArrayLike,
) -> Any:
    """Each member's segment name: a str for scalar inputs, else an array of str.

    The first rule that matches wins, so every member gets exactly one segment:

    1. ``dormant``: a buyer whose last purchase is more than ``dormant_recency_days`` ago, or a
       member who never purchased and joined more than ``dormant_recency_days`` ago;
    2. ``loyal``: a buyer with recency ≤ ``loyal_recency_days``, frequency ≥ ``loyal_frequency``
       and > ``low_frequency``, and monetary ≥ ``loyal_monetary`` (high R, F and M);
    3. ``potential``: new (tenure ≤ ``new_tenure_days``), never purchased (but not long enough
       to be dormant), or low frequency (frequency ≤ ``low_frequency``);
    4. ``ordinary``: everyone else.

    A buyer is a member with frequency > 0 and a finite recency. Unknown tenure (NaN) counts as
    neither new nor long-standing. Raises InvalidArgument naming a negative field.
    """
    rec = _arr(recency_days, "recency_days")
    freq = _arr(frequency, "frequency")
    mon = _arr(monetary, "monetary")
    ten = _arr(tenure_days, "tenure_days")
    for values, name in ((rec, "recency_days"), (freq, "frequency"), (ten, "tenure_days")):
        _not_negative(values, name)
    try:
        rec, freq, mon, ten = np.broadcast_arrays(rec, freq, mon, ten)
    except ValueError:
        raise InvalidArgument("recency_days", "inputs differ in length") from None
    t = thresholds
    mon = np.nan_to_num(mon, nan=0.0)
    buyer = (freq > 0) & np.isfinite(rec)
    dormant = (buyer & (rec > t.dormant_recency_days)) | (~buyer & (ten > t.dormant_recency_days))
    loyal = (
        buyer
        & (rec <= t.loyal_recency_days)
        & (freq >= t.loyal_frequency)
        & (freq > t.low_frequency)
        & (mon >= t.loyal_monetary)
    )
    potential = (ten <= t.new_tenure_days) | ~buyer | (freq <= t.low_frequency)
    names = np.select([dormant, loyal, potential], ["dormant", "loyal", "potential"], "ordinary")
    return names if names.ndim else str(names)


def band(prob: ArrayLike, cuts: tuple[float, float] = DEFAULT_BAND_CUTS) -> Any:
    """Churn-risk band: ``low`` below cuts[0], ``medium`` below cuts[1], ``high`` from cuts[1].

    A str for a scalar probability, else an array of str. Raises InvalidArgument for a
    probability outside [0, 1] (or NaN) and for cuts that are not 0 < low < high ≤ 1.
    """
    lo, hi = (float(c) for c in cuts)
    if not 0.0 < lo < hi <= 1.0:
        raise InvalidArgument("band_cuts", f"need 0 < low < high <= 1, got {cuts}")
    p = _arr(prob, "churn_probability")
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise InvalidArgument("churn_probability", "must be a probability in [0, 1]")
    names = np.select([p < lo, p < hi], ["low", "medium"], "high")
    return names if names.ndim else str(names)


class Action(NamedTuple):
    """A recommended CRM action: a stable code for systems, a sentence for people."""

    code: str
    description: str


# SPEC §4's default action per segment is the low-risk cell; higher churn risk escalates from
# cheap nudges to offers that cost points, because an offer only pays where it changes the
# outcome.
ACTIONS: MappingProxyType[tuple[str, str], Action] = MappingProxyType(
    {
        ("loyal", "low"): Action(
            "loyal_points_acceleration",
            "Points acceleration (a bonus multiplier on the next orders) and exclusive perks.",
        ),
        ("loyal", "medium"): Action(
            "loyal_exclusive_perks",
            "Exclusive perks made personal: early access, members-only redemptions and a "
            "points-acceleration week.",
        ),
        ("loyal", "high"): Action(
            "loyal_retention_offer",
            "Retention offer: personal bonus points or a points + cash deal in favourite "
            "categories, exclusive perks kept visible, and a service follow-up.",
        ),
        ("potential", "low"): Action(
            "potential_growth_tasks",
            "Growth tasks: purchase streaks and invite-a-friend to unlock rewards.",
        ),
        ("potential", "medium"): Action(
            "potential_guided_tasks",
            "Growth tasks with an easy first step: a short streak with a first-task bonus and "
            "the nearest unlock shown.",
        ),
        ("potential", "high"): Action(
            "potential_first_redemption",
            "First redemption made easy: a points + cash option within reach of the balance, "
            "plus one easy growth task.",
        ),
        ("dormant", "low"): Action(
            "dormant_expiry_reminder",
            "Expiry reminder with what the balance can still buy.",
        ),
        ("dormant", "medium"): Action(
            "dormant_targeted_redemption",
            "Expiry reminder plus a targeted redemption offer on items the member can afford.",
        ),
        ("dormant", "high"): Action(
            "dormant_revival_pack",
            "Revival pack: bonus points on a comeback order, an expiry reminder and a targeted "
            "redemption offer.",
        ),
        ("ordinary", "low"): Action(
            "ordinary_earning_paths",
            "Richer earning paths: category multipliers, double-points days and point-earning "
            "tasks.",
        ),
        ("ordinary", "medium"): Action(
            "ordinary_earning_challenge",
            "Richer earning paths with a time-boxed earning challenge towards the next unlock "
            "or tier.",
        ),
        ("ordinary", "high"): Action(
            "ordinary_retention_offer",
            "Retention offer: a targeted redemption or points + cash deal on the next order, "
            "plus richer earning paths.",
        ),
    }
)

ACTION_DESCRIPTIONS: MappingProxyType[str, str] = MappingProxyType(
    {a.code: a.description for a in ACTIONS.values()}
)


def recommended_action(segment: str, band: str) -> Action:
    """The action for one member's (segment, risk band); a tuple (code, description)."""
    if segment not in SEGMENTS:
        raise InvalidArgument("segment", f"unknown segment {segment!r}; expected one of {SEGMENTS}")
    if band not in BANDS:
        raise InvalidArgument("band", f"unknown band {band!r}; expected one of {BANDS}")
    return ACTIONS[(segment, band)]


def recommended_action_codes(segments: ArrayLike, bands: ArrayLike) -> npt.NDArray[np.str_]:
    """Vectorised `recommended_action(...).code` for batch scoring."""
    seg = np.asarray(segments, dtype=str)
    bnd = np.asarray(bands, dtype=str)
    try:
        seg, bnd = np.broadcast_arrays(seg, bnd)
    except ValueError:
        raise InvalidArgument("segments", "segments and bands differ in length") from None
    for values, name, allowed in ((seg, "segment", SEGMENTS), (bnd, "band", BANDS)):
        bad = sorted(set(np.unique(values).tolist()) - set(allowed))
        if bad:
            raise InvalidArgument(name, f"unknown value(s) {bad}; expected one of {allowed}")
    width = max(len(a.code) for a in ACTIONS.values())
    codes = np.empty(seg.shape, dtype=f"<U{width}")
    for (s, b), action in ACTIONS.items():
        codes[(seg == s) & (bnd == b)] = action.code
    return codes
