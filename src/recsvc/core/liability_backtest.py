"""The liability forecast checked against what happened: the back-fit calibration and the
backtest errors. Plain numpy; `recsvc.reports.liability` runs the projections and reads the
ledger's actual months.

Back-fit calibration (`calibrate`, used by the report only when asked): re-run the
projection from origins 3-6 months before the as-of month, with only what was known at each,
over the months up to the as-of instant, and scale e_i and r_i by the factors that make it
reproduce what the ledger did then (earning first, then burning with the earn factor applied).
Measured, it does not carry over from the origins to the as-of instant reliably (see the
report's method section), so it is off by default.

A backtest compares the forecast's monthly figures with the months the tables hold beyond the
as-of instant: the mean absolute percentage error over months with something actual, the error
of the horizon total, and how many actual months fall inside the bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.core.liability import Band, horizon_total

F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Back-fit calibration: the same projection from earlier origins against what happened since.
# --------------------------------------------------------------------------------------------
FACTOR_RANGE = (0.25, 4.0)  # a back-fit that asks for more than this is not trusted further


def fit_factor(evaluate: Callable[[float], float], target: float, *, iterations: int = 6,
               limits: tuple[float, float] = FACTOR_RANGE) -> float:
    """The factor f with evaluate(f) = target, by the fixed point f <- f · target / evaluate(f)
    from f = 1, clipped to `limits`. Exact in one step when evaluate is proportional to f (the
    earning); a few steps when it bends (burns are bounded by the balance). 1 when there is
    nothing to compare (target or evaluate(1) not positive)."""
    lo, hi = limits
    if not 0 < lo <= 1 <= hi:
        raise ValueError("limits must satisfy 0 < low <= 1 <= high")
    f = 1.0
    if target <= 0:
        return f
    for _ in range(iterations):
        got = evaluate(f)
        if got <= 0:
            return f
        step = float(np.clip(f * target / got, lo, hi))
        if abs(step - f) <= 1e-9 * f:
            return step
        f = step
    return f


@dataclass(frozen=True)
class Calibration:
    """Correction factors for the earn and burn rates from back-fits, with what they saw."""

    earn: float
    burn: float
    origins: tuple[str, ...]  # the origins used (ISO instants)
    actual: Mapping[str, float]  # totals over the back-fit months, all origins together
    projected: Mapping[str, float]  # the uncalibrated projection's totals, likewise


NO_CALIBRATION = Calibration(1.0, 1.0, (), {}, {})


def calibrate(run: Callable[[float, float], Mapping[str, float]], actual: Mapping[str, float],
              origins: Sequence[str]) -> Calibration:
    """Factors for the earn and burn rates that make the back-fit projection `run(earn, burn)`
    (totals of 'earned' and 'redeemed' over the back-fit months) reproduce the `actual` totals:
    first the earning (redeemed depends on it through the balance), then the burning with the
    earn factor applied. Breakage is not fitted: it follows from the two."""
    raw = dict(run(1.0, 1.0))
    if not origins:
        return NO_CALIBRATION
    earn = fit_factor(lambda f: float(run(f, 1.0)["earned"]), float(actual["earned"]))
    burn = fit_factor(lambda f: float(run(earn, f)["redeemed"]), float(actual["redeemed"]))
    return Calibration(earn, burn, tuple(origins), dict(actual), raw)


# --------------------------------------------------------------------------------------------
# Backtest.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BacktestError:
    months: int  # months compared
    mape: float | None  # mean |forecast - actual| / actual over months with actual > 0
    total_forecast: float
    total_actual: float
    total_error: float | None  # (forecast - actual) / actual of the horizon total
    inside: int  # months whose actual lies inside the interval

    def as_dict(self) -> dict[str, float | int | None]:
        return {"months": self.months, "mape": self.mape,
                "total_forecast": self.total_forecast, "total_actual": self.total_actual,
                "total_error": self.total_error, "months_inside_interval": self.inside}


def backtest_error(name: str, band: Band, actual: F64) -> BacktestError:
    """Forecast against what happened in the first len(actual) months."""
    actual = np.asarray(actual, dtype=np.float64)
    k = len(actual)
    if k == 0 or k > len(band.point):
        raise ValueError(f"{name}: between 1 and {len(band.point)} actual months needed")
    f = band.point[:k]
    pos = actual > 0
    mape = float(np.mean(np.abs(f[pos] - actual[pos]) / actual[pos])) if pos.any() else None
    tf, ta = float(horizon_total(name, f)), float(horizon_total(name, actual))
    inside = int(((actual >= band.low[:k]) & (actual <= band.high[:k])).sum())
    return BacktestError(k, mape, tf, ta, (tf - ta) / ta if ta > 0 else None, inside)


def backtest(bands: Mapping[str, Band], actual: Mapping[str, F64]) -> dict[str, BacktestError]:
    return {name: backtest_error(name, bands[name], actual[name]) for name in actual}
