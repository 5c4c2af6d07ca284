"""The recommendation index of SPEC §2 and its factors, for one pair or numpy arrays of them.

    value_coefficient    = market_price × perceived_discount / points_price × campaign
    demand_match         = min(points_price, demand) / max(points_price, demand)
    recommendation_index = value_coefficient × demand_match × behaviour_weight × discount_coeff

Each function accepts scalars or arrays (broadcasting) and returns the same kind. This module is
the single definition used by the simulator, the feature jobs, training and the service.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from recsvc.config import IndexRules
from recsvc.core import elementwise as ew

FloatLike = Any  # float | npt.NDArray[np.float64]; numpy's scalar/array union is not worth typing


def per_item(values: Any, n: int, dtype: Any = np.float64) -> npt.NDArray[Any]:
    """`values` (a scalar, or already one per item) as one value per item: the factors that
    depend on the member alone come back as scalars. Cheaper than `np.broadcast_to`."""
    a = np.asarray(values, dtype=dtype)
    return a if a.shape == (n,) else np.full(n, a, dtype=dtype)


def _out(x: npt.NDArray[np.float64]) -> FloatLike:
    return x if x.ndim else float(x)


def value_coefficient(
    market_price: FloatLike,
    perceived_discount: FloatLike,
    points_price: FloatLike,
    campaign_multiplier: FloatLike = 1.0,
) -> FloatLike:
    """Currency per point (market price in currency units); 0 when the points price is not > 0.

    >>> value_coefficient(80, 0.85, 800)
    0.085
    """
    price = np.asarray(market_price, dtype=np.float64)
    pts = np.asarray(points_price, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        vc = price * np.asarray(perceived_discount, dtype=np.float64) / pts
    vc = np.where(pts > 0, vc * campaign_multiplier, 0.0)
    return _out(np.round(vc, 12))


def demand_match(points_price: FloatLike, points_demand: FloatLike) -> FloatLike:
    """How well a points price fits the points a member is ready to spend, in [0, 1].

    >>> demand_match(375, 300)
    0.8
    """
    a, b = points_price, points_demand
    return ew.where((a > 0) & (b > 0), ew.ratio(ew.minimum(a, b), ew.maximum(a, b)), 0.0)


def behaviour_weight(
    rules: IndexRules,
    orders_90d: FloatLike,
    days_since_last_order: FloatLike,
    young: FloatLike = False,
) -> FloatLike:
    """Weight in [floor, 1] (× the young multiplier) from purchase frequency and recency.

    A member with no order yet (days_since_last_order = inf or NaN) gets the floor.
    """
    freq = 1.0 - np.exp(-np.asarray(orders_90d, dtype=np.float64) / rules.frequency_scale_orders)
    days = np.asarray(days_since_last_order, dtype=np.float64)
    recency = np.where(
        np.isfinite(days), np.exp(-np.maximum(days, 0.0) / rules.recency_scale_days), 0.0
    )
    w = rules.behaviour_floor + (1.0 - rules.behaviour_floor) * freq * recency
    w = np.where(np.asarray(young, dtype=bool), w * rules.young_behaviour_multiplier, w)
    return _out(w)


def high_spender(rules: IndexRules, avg_order_value_minor: FloatLike,
                 minor_per_unit: int) -> Any:
    """Whether the member's average order over the last year reaches the high-spender line of
    the rules (an unknown average, NaN: not); a bool or a bool array."""
    return avg_order_value_minor >= rules.high_spender_min_aov_units * minor_per_unit


def discount_coefficient(
    rules: IndexRules, item_discount: FloatLike, high_spender: FloatLike = False
) -> FloatLike:
    """The item's current price multiplier, times the high-spender coefficient where it applies."""
    return ew.where(high_spender, item_discount * rules.high_spender_discount, item_discount)


def recommendation_index(
    value_coeff: FloatLike, demand: FloatLike, behaviour: FloatLike, discount: FloatLike
) -> FloatLike:
    """The product of the four factors.

    >>> round(recommendation_index(0.12, 0.8, 0.8, 0.8), 10)
    0.06144
    """
    return value_coeff * demand * behaviour * discount


def in_vacuum_zone(rules: IndexRules, value_coeff: FloatLike) -> FloatLike:
    """Items whose value per point is under the vacuum threshold: members stop redeeming."""
    flag = np.asarray(value_coeff, dtype=np.float64) < rules.vacuum_threshold
    return flag if flag.ndim else bool(flag)


def max_points_price(rules: IndexRules, market_price: FloatLike, perceived_discount: FloatLike,
                     step: int) -> npt.NDArray[np.int64]:
    """The highest points price, in whole `step`s, that keeps the value per point at or above the
    vacuum threshold: `value_coefficient` solved for the points price, then checked with it
    (its 12-decimal rounding decides at the boundary). 0 when no price of at least one step
    qualifies; no limit (the largest int64 step multiple) when the threshold is 0.

    >>> int(max_points_price(IndexRules(), 30.0, 1.0, 100))  # 30.00 / 0.03 = 1,000 points
    1000
    """
    market = np.asarray(market_price, dtype=np.float64)
    disc = np.asarray(perceived_discount, dtype=np.float64)
    if rules.vacuum_threshold <= 0:
        return np.full(np.broadcast(market, disc).shape, 2**62 // step * step, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        steps = np.floor(market * disc * rules.campaign_multiplier / rules.vacuum_threshold
                         / step + 1e-9)
    price = np.where(np.isfinite(steps), np.clip(steps, 0, 2**53), 0).astype(np.int64) * step
    for _ in range(2):  # the solved price rounded past the boundary: one step lower
        vc = value_coefficient(market, disc, price, rules.campaign_multiplier)
        low = (price >= step) & np.asarray(in_vacuum_zone(rules, vc))
        if not low.any():
            break
        price = np.where(low, price - step, price)
    return price


def points_better(index: FloatLike, threshold: float) -> FloatLike:
    """The hint rule: paying with points is the better deal when the index exceeds the threshold."""
    if isinstance(index, float):
        return index > threshold
    flag = np.asarray(index, dtype=np.float64) > threshold
    return flag if flag.ndim else bool(flag)


class IndexFactors(NamedTuple):
    """The index and its factors for one or many (member, item) pairs (a named tuple:
    immutable, and cheap to make, as a 200-option answer makes 200 of them)."""

    value_coefficient: FloatLike
    demand_match: FloatLike
    behaviour_weight: FloatLike
    discount_coefficient: FloatLike
    recommendation_index: FloatLike
    vacuum: FloatLike


def index_factors(
    rules: IndexRules,
    *,
    market_price: FloatLike,
    perceived_discount: FloatLike,
    points_price: FloatLike,
    item_discount: FloatLike,
    balance: FloatLike,
    orders_90d: FloatLike,
    days_since_last_order: FloatLike,
    young: FloatLike = False,
    high_spender: FloatLike = False,
) -> IndexFactors:
    """All factors at once, as the simulator, training and the service compute them."""
    vc = value_coefficient(
        market_price, perceived_discount, points_price, rules.campaign_multiplier
    )
    return pair_factors(
        rules, value_coeff=vc, vacuum=in_vacuum_zone(rules, vc), points_price=points_price,
        item_discount=item_discount, balance=balance,
        behaviour=behaviour_weight(rules, orders_90d, days_since_last_order, young),
        high_spender=high_spender)


class ItemFactors(NamedTuple):
    """What the index takes from the items alone, one value per item: computed once a
    catalogue load, not once a request."""

    value_coefficient: FloatLike
    vacuum: FloatLike


def item_factors(rules: IndexRules, market_price: FloatLike, perceived_discount: FloatLike,
                 points_price: FloatLike) -> ItemFactors:
    """The items' value coefficients (market price in currency units) and vacuum flags."""
    vc = np.asarray(value_coefficient(market_price, perceived_discount, points_price,
                                      rules.campaign_multiplier), dtype=np.float64)
    return ItemFactors(vc, np.asarray(in_vacuum_zone(rules, vc), dtype=bool))


def pair_factors(
    rules: IndexRules,
    *,
    value_coeff: FloatLike,
    vacuum: FloatLike,
    points_price: FloatLike,
    item_discount: FloatLike,
    balance: FloatLike,
    behaviour: FloatLike,
    high_spender: FloatLike = False,
) -> IndexFactors:
    """The factors from what depends on the item alone (its value coefficient and vacuum flag,
    computed once a catalogue load) and on the member alone (the behaviour weight, once a
    member read): what is left depends on the pair. Plain numbers or arrays alike."""
    dm = demand_match(points_price, balance)
    dc = discount_coefficient(rules, item_discount, high_spender)
    return IndexFactors(value_coeff, dm, behaviour, dc,
                        recommendation_index(value_coeff, dm, behaviour, dc), vacuum)
