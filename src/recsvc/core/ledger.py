"""Points ledger arithmetic: monthly expiry buckets, FIFO-by-expiry burning, earning by the rules.

Points expire at the end of the month `months` after the month they were earned in. A member's
points are therefore held in buckets keyed by *expiry month* (months since 1970-01), and every
burn draws on the earliest-expiring bucket first. The functions work on one member (1-D bucket
vector, scalar amount) and on many at once (2-D matrix, one row per member) with the same code,
so the simulator, the importer and the service share one definition.

It also holds the ledger's vocabulary every layer shares (pure, so the core can use it too): the
µs instants of the tables (US, DAY_US, `instant`, `epoch_us`) and the kind codes (KIND_CODES);
`recsvc.data.columns` turns the tables' Arrow columns into them.
"""

from __future__ import annotations

import datetime as dt
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme

IntArray = npt.NDArray[np.int64]
A = TypeVar("A", int, IntArray)

EPOCH_YEAR = 1970
EPOCH = dt.datetime(EPOCH_YEAR, 1, 1, tzinfo=dt.UTC)

# Instants: the tables' timestamps, held as int64 microseconds since the epoch (UTC).
US = 1_000_000  # µs per second
DAY_US = 86_400 * US

# The ledger's kinds (schema.LEDGER "kind") as the small codes array code compares; a value that
# is none of these (the tables hold none) is KIND_OTHER.
KIND_EARN, KIND_BURN, KIND_EXPIRE, KIND_OPENING, KIND_OTHER = 0, 1, 2, 3, 4
KIND_CODES: dict[str, int] = {"earn": KIND_EARN, "burn": KIND_BURN, "expire": KIND_EXPIRE,
                              "opening": KIND_OPENING}


def instant(us: int) -> dt.datetime:
    """The aware UTC datetime of µs since the epoch."""
    return dt.datetime.fromtimestamp(us / US, tz=dt.UTC)


def epoch_us(when: dt.datetime) -> int:
    """µs since the epoch of an aware datetime, exactly (no float rounding)."""
    return (when - EPOCH) // dt.timedelta(microseconds=1)


def month_index(when: dt.date | dt.datetime) -> int:
    """Months since 1970-01 of a date (the bucket key)."""
    return (when.year - EPOCH_YEAR) * 12 + when.month - 1


def month_start(index: int) -> dt.datetime:
    """First instant (UTC) of month `index`."""
    year, month0 = divmod(index, 12)
    return dt.datetime(EPOCH_YEAR + year, month0 + 1, 1, tzinfo=dt.UTC)


def expiry_instant(expiry_month: int) -> dt.datetime:
    """Points in bucket `expiry_month` lapse at the end of that month: the next month's start."""
    return month_start(expiry_month + 1)


def expiry_months_for_tier(programme: Programme, tier: str) -> int:
    exp = programme.expiry
    return exp.high_value_months if tier in exp.high_value_tiers else exp.ordinary_months


def burn_fifo(buckets: IntArray, amount: A) -> tuple[IntArray, IntArray]:
    """Take `amount` points from `buckets` (last axis ordered by expiry), earliest first.

    Returns (remaining buckets, points taken per bucket). Raises ValueError when an amount is
    negative or larger than the points held: the ledger never goes negative.
    """
    buckets = np.asarray(buckets, dtype=np.int64)
    want = np.asarray(amount, dtype=np.int64)
    if np.any(want < 0):
        raise ValueError("burn amount must be >= 0")
    held = buckets.sum(axis=-1)
    if np.any(want > held):
        raise ValueError("burn amount exceeds the points held")
    return take_earliest(buckets, want)


N = TypeVar("N", IntArray, npt.NDArray[np.float64])


def take_earliest(buckets: N, amount: N) -> tuple[N, N]:
    """FIFO without the checks, for integer points and for expected (fractional) points alike:
    (remaining buckets, taken per bucket). `amount` must lie within [0, the points held]."""
    cum = np.cumsum(buckets, axis=-1)
    left_cum = np.maximum(cum - amount[..., None], 0)
    remaining = np.diff(left_cum, axis=-1, prepend=0)
    return remaining, buckets - remaining


def tier_for_spend(programme: Programme, cumulative_spend_minor: A) -> A:
    """Index into `programme.tiers.order` of the tier earned by a cumulative spend."""
    bounds = np.asarray(programme.tiers.min_spend_units, dtype=np.int64)
    bounds = bounds * programme.currency.minor_per_unit
    idx = np.searchsorted(bounds, np.asarray(cumulative_spend_minor), side="right") - 1
    return idx if isinstance(idx, np.ndarray) and idx.ndim else int(idx)  # type: ignore[return-value]


def points_earned(
    programme: Programme,
    amount_minor: A,
    tier_multiplier: float | npt.NDArray[np.float64],
    category_multiplier: float | npt.NDArray[np.float64] = 1.0,
    campaign_multiplier: float | npt.NDArray[np.float64] = 1.0,
) -> A:
    """Points an order earns: units spent × rate × tier × category × campaign, rounded down.

    Negative and zero amounts earn nothing. Multipliers are applied to the exact product and the
    result floored once, so 99.99 spent at 1.5× earns floor(149.985) = 149 points.
    """
    amount = np.maximum(np.asarray(amount_minor, dtype=np.int64), 0)
    units = amount / programme.currency.minor_per_unit
    raw = units * programme.earning.points_per_unit
    raw = raw * tier_multiplier * category_multiplier * campaign_multiplier
    # a tiny epsilon keeps exact products such as 0.7 * 100 from flooring to 69
    pts = np.floor(raw + 1e-9).astype(np.int64)
    return pts if pts.ndim else int(pts)  # type: ignore[return-value]


def campaign_multiplier(programme: Programme, day: dt.date) -> float:
    earning = programme.earning
    if day.strftime("%m-%d") in earning.double_points_days:
        return earning.double_points_multiplier
    return 1.0


def category_multiplier(programme: Programme, category: str | None) -> float:
    if category is None:
        return 1.0
    return programme.earning.category_multipliers.get(category, 1.0)
