"""Redemption hints for one member and item: the hint rule, points + cash, gaps and reasons.

Pure functions over integers and the index factors of `recsvc.core.index`. Money is integer
minor units and points are integers; the one rounding rule is that the member never pays less
than the price: cash for the points not paid rounds UP, points rounded to whole steps round
DOWN.

Points + cash: paying `p` of an item's `P` points leaves the fraction (P - p) / P of its price
to pay in cash, so "1,000 points + 9.90" buys a 35.00 coffee priced at about 1,400 points
(SPEC §3). The cash price of the item is its market price times the current discount.
"""

from __future__ import annotations

import enum
import functools
from fractions import Fraction
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.core import elementwise as ew
from recsvc.core import index as idx

A = TypeVar("A", int, npt.NDArray[np.int64])
HIGH_PROPENSITY = 0.2
"""P(redeem within 7 days) from which an answer gives the HIGH_PROPENSITY reason."""


class Reason(enum.Enum):
    """Why a hint says what it says (mirrors recsvc.v1.ReasonCode)."""

    INDEX_ABOVE_THRESHOLD = 1
    INDEX_BELOW_THRESHOLD = 2
    VACUUM_ZONE = 3
    NOT_AFFORDABLE = 4
    USES_EXPIRING_POINTS = 5
    HIGH_PROPENSITY = 6
    ON_PROMOTION = 7
    UNLOCK_CLOSE = 8
    COLD_START = 9
    OUT_OF_STOCK = 10
    SAME_CATEGORY = 11
    SAME_POINTS_CLASS = 12
    SIMILAR_POINTS_PRICE = 13

    # Members are singletons compared by identity, so identity is a valid hash; Enum's own
    # hashes the member's name in Python, which was most of the cost of looking up a hint's
    # reasons (a 100-hint batch hashes ~900 of them).
    __hash__ = object.__hash__


class PointsCash(NamedTuple):
    """Pay `points` and `cash_minor` (immutable, and cheap to make)."""

    points: int
    cash_minor: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cash_for_remainder(points_price: A, cash_price_minor: A, points: A) -> A:
    """Cash (minor units, rounded up) for the part of the item `points` does not cover.

    Integers in, integers out; numpy int64 arrays work element-wise (the simulator's batches).
    """
    if isinstance(points_price, int) and isinstance(cash_price_minor, int) and \
            isinstance(points, int):  # one request's scalars: plain integer arithmetic
        if points_price <= 0:
            return cash_price_minor
        paid = min(max(points, 0), points_price)
        return -(-((points_price - paid) * cash_price_minor) // points_price)
    pp = np.asarray(points_price, dtype=np.int64)
    price = np.asarray(cash_price_minor, dtype=np.int64)
    covered = np.clip(np.asarray(points, dtype=np.int64), 0, np.maximum(pp, 0))
    cash = np.where(pp > 0, -(-((pp - covered) * price) // np.maximum(pp, 1)), price)
    return cash if cash.ndim else int(cash)  # type: ignore[return-value]


def points_cash_table(
    programme: Programme, points_price: npt.NDArray[np.int64],
    cash_price_minor: npt.NDArray[np.int64], balance: int, limit: int = 4,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """`points_cash_options` for many items at once: (points, cash, count), where row i's
    options are `points[i, :count[i]]` with `cash[i, :count[i]]`."""
    step = programme.burning.min_points_step
    price = np.asarray(points_price, dtype=np.int64)
    cash_price = np.asarray(cash_price_minor, dtype=np.int64)
    pts = np.zeros((len(price), limit), dtype=np.int64)
    cash = np.zeros((len(price), limit), dtype=np.int64)
    full = (price > 0) & (price <= balance) & (limit > 0)
    pts[full, 0] = price[full]
    count = full.astype(np.int64)
    usable = np.minimum(balance, price - 1) // step * step  # partial: strictly below the price
    n = limit - count
    last = np.where(full, price, -1)
    for k in range(limit):
        # the most the balance allows, then evenly fewer, in whole steps; no repeats
        p = usable * (n - k) // np.maximum(n, 1) // step * step
        rows = np.flatnonzero((k < n) & (p >= step) & (p != last))
        pts[rows, count[rows]] = p[rows]
        cash[rows, count[rows]] = cash_for_remainder(price[rows], cash_price[rows], p[rows])
        count[rows] += 1
        last[rows] = p[rows]
    return pts, cash, count


def points_cash_options(
    programme: Programme, points_price: int, cash_price_minor: int, balance: int, limit: int = 4
) -> list[PointsCash]:
    """Ways to pay, most points first, at most `limit`: all points when the balance covers
    them, then partial payments in whole steps (the most the balance allows, then evenly fewer)
    with the rest in cash."""
    pts, cash, count = points_cash_table(programme, np.array([points_price]),
                                         np.array([cash_price_minor]), balance, limit)
    return [PointsCash(int(p), int(c)) for p, c in zip(pts[0, :count[0]].tolist(),
                                                       cash[0, :count[0]].tolist(), strict=True)]


def spend_to_earn(programme: Programme, points: A, tier_multiplier: float = 1.0) -> A:
    """Spend in minor units that earns `points` at the base rate times the tier multiplier
    (int64 arrays element-wise; 0 for no points).

    Exact: the multiplier is taken as the decimal it is written as (1.2, not its binary
    neighbour), and the spend is rounded up to a whole unit so that floor(earned) >= points.
    """
    m = programme.currency.minor_per_unit
    if isinstance(points, np.ndarray):
        if not (points > 0).any():
            return np.zeros_like(points)
        num, den = _earning_rate(programme.earning.points_per_unit, tier_multiplier)
        return np.where(points > 0, -(-points * den // num) * m, 0)
    if points <= 0:
        return 0
    num, den = _earning_rate(programme.earning.points_per_unit, tier_multiplier)
    return _ceil_div(points * den, num) * m


@functools.lru_cache(maxsize=256)
def _earning_rate(points_per_unit: float, tier_multiplier: float) -> tuple[int, int]:
    """Points per currency unit as an exact fraction (numerator, denominator)."""
    per_unit = Fraction(str(points_per_unit)) * Fraction(str(tier_multiplier))
    if per_unit <= 0:
        raise ValueError("the programme earns no points")
    return per_unit.numerator, per_unit.denominator


class Hint(NamedTuple):
    """The hint for one item (a named tuple, as the index factors and options are: a batch
    builds a hundred of them, four times faster than a frozen dataclass)."""

    points_better: bool
    factors: idx.IndexFactors
    threshold: float
    vacuum: bool
    affordable: bool
    points_gap: int
    spend_to_close_gap_minor: int
    points_cash: PointsCash
    reasons: tuple[Reason, ...]
    in_stock: bool = True


def hint(
    programme: Programme,
    *,
    market_price_minor: int,
    perceived_discount: float,
    points_price: int,
    item_discount: float,
    balance: int,
    orders_90d: float,
    days_since_last_order: float,
    young: bool = False,
    high_spender: bool = False,
    threshold: float | None = None,
    tier_multiplier: float = 1.0,
    expiring_points: int = 0,
    propensity: float | None = None,
    high_propensity: float = HIGH_PROPENSITY,
    cold_start: bool = False,
    in_stock: bool = True,
) -> Hint:
    """The product-page answer: is paying with points the better deal here, and why."""
    factors = idx.index_factors(
        programme.index, market_price=market_price_minor / programme.currency.minor_per_unit,
        perceived_discount=perceived_discount, points_price=points_price,
        item_discount=item_discount, balance=balance, orders_90d=orders_90d,
        days_since_last_order=days_since_last_order, young=young, high_spender=high_spender)
    return pair_hint(
        programme, factors, cash_price_minor=cash_price(market_price_minor, item_discount),
        points_price=points_price, item_discount=item_discount, balance=balance,
        threshold=threshold, tier_multiplier=tier_multiplier, expiring_points=expiring_points,
        propensity=propensity, high_propensity=high_propensity, cold_start=cold_start,
        in_stock=in_stock)


def cash_price(market_price_minor: A, item_discount: Any) -> A:
    """The cash price of an item: its market price times its current discount, rounded to
    the nearest minor unit (half to even, as np.rint)."""
    if isinstance(market_price_minor, np.ndarray) or isinstance(item_discount, np.ndarray):
        return np.rint(np.asarray(market_price_minor) * item_discount).astype(np.int64)
    return round(market_price_minor * item_discount)


def first_payment(programme: Programme, points_price: A, cash_price_minor: A,
                  balance: A) -> tuple[A, A]:
    """The first of `points_cash_options` (points, cash): all points when the balance covers
    them, else the most the balance allows in whole steps (strictly below the price) with
    the rest in cash, else (0, the cash price). Plain integers or arrays alike."""
    step = programme.burning.min_points_step
    price = points_price
    full = (price > 0) & (price <= balance)
    usable = ew.minimum(balance, price - 1) // step * step
    partial = ew.not_(full) & (usable >= step)
    points = ew.where(full, price, ew.where(partial, usable, 0))
    cash = ew.where(full, 0, ew.where(
        partial, cash_for_remainder(price, cash_price_minor, usable), cash_price_minor))
    return points, cash


def _hint_columns(
    programme: Programme, factors: idx.IndexFactors, *, cash_price_minor: Any,
    points_price: Any, item_discount: Any, balance: Any, threshold: Any,
    tier_multiplier: float, expiring_points: Any, propensity: Any, high_propensity: float,
    cold_start: Any, in_stock: Any,
) -> tuple[Any, Any, Any, Any, Any, Any]:
    """The hint rule and what each hint says, for one pair or arrays of them: (better, gap,
    spend to close it, points and cash of the first way to pay, reason bits)."""
    better = factors.recommendation_index > threshold
    gap = ew.maximum(points_price - balance, 0)
    pay_points, pay_cash = first_payment(programme, points_price, cash_price_minor, balance)
    spend = spend_to_earn(programme, gap, tier_multiplier)
    high = False if propensity is None else propensity >= high_propensity
    reasons = ew.bits(better, ew.not_(better), factors.vacuum, gap > 0,
                      (pay_points > 0) & (expiring_points > 0), high, item_discount < 1.0,
                      cold_start, ew.not_(in_stock))
    return better, gap, spend, pay_points, pay_cash, reasons


def pair_hint(
    programme: Programme,
    factors: idx.IndexFactors,
    *,
    cash_price_minor: int,
    points_price: int,
    item_discount: float,
    balance: int,
    threshold: float | None = None,
    tier_multiplier: float = 1.0,
    expiring_points: int = 0,
    propensity: float | None = None,
    high_propensity: float = HIGH_PROPENSITY,
    cold_start: bool = False,
    in_stock: bool = True,
) -> Hint:
    """`hints` for one item, in plain numbers: the product page's call, which numpy's
    per-call overhead would cost more than the rule itself."""
    threshold = programme.index.hint_threshold if threshold is None else threshold
    better, gap, spend, pts, cash, bits = _hint_columns(
        programme, factors, cash_price_minor=cash_price_minor, points_price=points_price,
        item_discount=item_discount, balance=balance, threshold=threshold,
        tier_multiplier=tier_multiplier, expiring_points=expiring_points, propensity=propensity,
        high_propensity=high_propensity, cold_start=cold_start, in_stock=in_stock)
    vc, dm, bw, dc, index, vacuum = factors
    vacuum = bool(vacuum)
    return Hint(bool(better), idx.IndexFactors(float(vc), float(dm), float(bw), float(dc),
                                               float(index), vacuum),
                threshold, vacuum, gap == 0, int(gap), int(spend), PointsCash(int(pts), int(cash)),
                reasons_of(_HINT_REASONS, int(bits)), bool(in_stock))


def hints(
    programme: Programme,
    factors: idx.IndexFactors,
    *,
    market_price_minor: npt.NDArray[np.int64],
    points_price: npt.NDArray[np.int64],
    item_discount: npt.NDArray[np.float64],
    balance: int,
    threshold: float | None = None,
    tier_multiplier: float = 1.0,
    expiring_points: int = 0,
    propensity: npt.NDArray[np.float64] | None = None,
    high_propensity: float = HIGH_PROPENSITY,
    cold_start: bool = False,
    in_stock: npt.NDArray[np.bool_],
) -> list[Hint]:
    """`hint` for one member and many items, from the member's index factors for them
    (`recsvc.core.ranking.member_factors`): the columns are computed first, the loop only
    assembles the answers."""
    threshold = programme.index.hint_threshold if threshold is None else threshold
    n = len(points_price)
    price = np.asarray(points_price, dtype=np.int64)
    discount = np.asarray(item_discount, dtype=np.float64)
    vacuum = idx.per_item(factors.vacuum, n, bool)
    stock = idx.per_item(in_stock, n, bool)
    better, gap, spend, pts, cash, bits = _hint_columns(
        programme, factors._replace(vacuum=vacuum),
        cash_price_minor=cash_price(np.asarray(market_price_minor), discount),
        points_price=price, item_discount=discount, balance=balance, threshold=threshold,
        tier_multiplier=tier_multiplier, expiring_points=expiring_points,
        propensity=None if propensity is None else np.asarray(propensity),
        high_propensity=high_propensity, cold_start=cold_start, in_stock=stock)
    columns = [idx.per_item(v, n).tolist() for v in factors[:5]]
    rows = zip(*columns, vacuum.tolist(), better.tolist(), gap.tolist(), spend.tolist(),
               pts.tolist(), cash.tolist(), bits.tolist(), stock.tolist(), strict=True)
    return [Hint(ok, idx.IndexFactors(vc, dm, bw, dc, ix, vac), threshold, vac, g == 0, g, sp,
                 PointsCash(p, c), reasons_of(_HINT_REASONS, b), st)
            for vc, dm, bw, dc, ix, vac, ok, g, sp, p, c, b, st in rows]


_HINT_REASONS = (Reason.INDEX_ABOVE_THRESHOLD, Reason.INDEX_BELOW_THRESHOLD, Reason.VACUUM_ZONE,
                 Reason.NOT_AFFORDABLE, Reason.USES_EXPIRING_POINTS, Reason.HIGH_PROPENSITY,
                 Reason.ON_PROMOTION, Reason.COLD_START, Reason.OUT_OF_STOCK)


@functools.lru_cache(maxsize=4096)
def reasons_of(table: tuple[Reason, ...], bits: int) -> tuple[Reason, ...]:
    """The reasons of `table` whose bit (their place in it) is set in `bits`, in that order:
    answers compute their reasons as bit columns, and make each combination's tuple once."""
    return tuple(r for j, r in enumerate(table) if bits >> j & 1)
