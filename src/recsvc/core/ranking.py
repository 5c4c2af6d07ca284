"""'The best way to spend my points': rank the catalogue for one member, explain each option.

Score = recommendation index × propensity^w, with w the experiment arm's propensity weight
(w = 0, or no model answering, ranks by the index alone). Out-of-stock items are never
offered; items the member cannot afford yet stay in the list with their gap and points + cash
options unless the caller asks for affordable ones only.

Two stages, as a catalogue of thousands must rank in about a millisecond: the index (cheap,
vectorised) picks a shortlist of the best `shortlist` items that pass the filters, and only
those are scored by the propensity model and re-ranked. An item outside the shortlist can only
outrank one inside it if its propensity is higher by more than the index ratio to the power 1/w.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.config import Arm, Programme
from recsvc.core import index as idx
from recsvc.core.experiments import hint_threshold
from recsvc.core.redemption import (
    HIGH_PROPENSITY,
    PointsCash,
    Reason,
    points_cash_options,
    spend_to_earn,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
SHORTLIST = 200
"""Items scored by the propensity model per request (the index's best, after filters)."""
Propensity = Callable[[I64], F64]
"""Scores catalogue positions: P(redeem) for each item at those positions."""


@dataclass(frozen=True)
class Catalogue:
    """Redeemable items as parallel arrays (the service keeps this in memory)."""

    item_id: I64
    category: npt.NDArray[np.object_]
    points_price: I64
    market_price_minor: I64
    perceived_discount: F64
    discount_coefficient: F64
    stock: I64

    def __len__(self) -> int:
        return len(self.item_id)


@dataclass(frozen=True)
class Member:
    balance: int
    expiring_points: int = 0
    orders_90d: float = 0.0
    days_since_last_order: float = float("inf")
    young: bool = False
    high_spender: bool = False
    tier_multiplier: float = 1.0


@dataclass(frozen=True)
class Option:
    item_id: int
    rank: int
    score: float
    factors: idx.IndexFactors
    propensity: float | None
    points_price: int
    points_cash: tuple[PointsCash, ...]
    points_gap: int
    spend_to_close_gap_minor: int
    expiring_points_used: int
    category: str
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Unlock:
    category: str
    unlock_points: int
    points_gap: int
    spend_to_unlock_minor: int


def recommend(
    programme: Programme,
    arm: Arm,
    member: Member,
    items: Catalogue,
    propensity: F64 | Propensity | None = None,
    *,
    limit: int = 20,
    categories: Sequence[str] = (),
    max_points_price: int = 0,
    affordable_only: bool = False,
    shortlist: int = SHORTLIST,
) -> list[Option]:
    """The top `limit` options for the member, best first (ties: lower item id first).

    `propensity` is one probability per catalogue item, or a function scoring the shortlisted
    positions only (see the module docstring); None ranks by the index alone.
    """
    rules = programme.index
    threshold = hint_threshold(arm, rules)
    n = len(items)
    f = idx.index_factors(
        rules, market_price=items.market_price_minor / programme.currency.minor_per_unit,
        perceived_discount=items.perceived_discount, points_price=items.points_price,
        item_discount=items.discount_coefficient, balance=np.full(n, member.balance),
        orders_90d=member.orders_90d, days_since_last_order=member.days_since_last_order,
        young=member.young, high_spender=member.high_spender)
    # member-level factors come back as scalars: give every factor one value per item
    vc, dm, bw, dc, index = (np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (
        f.value_coefficient, f.demand_match, f.behaviour_weight, f.discount_coefficient,
        f.recommendation_index))
    vacuum = np.broadcast_to(np.asarray(f.vacuum, dtype=bool), (n,))
    keep = items.stock > 0
    if categories:
        keep &= np.isin(items.category, list(categories))
    if max_points_price > 0:
        keep &= items.points_price <= max_points_price
    if affordable_only:
        keep &= items.points_price <= member.balance
    candidates = np.flatnonzero(keep)
    by_index = np.lexsort((items.item_id[candidates], -index[candidates]))
    candidates = candidates[by_index[:max(shortlist, limit)]]
    prob: F64 | None = None
    if propensity is not None:
        got = propensity(candidates) if callable(propensity) else propensity[candidates]
        prob = np.full(n, np.nan)
        prob[candidates] = got
    score = index.copy()
    if prob is not None and arm.propensity_weight > 0:
        score = index * np.power(np.clip(np.nan_to_num(prob), 0.0, 1.0), arm.propensity_weight)
    order = candidates[np.lexsort((items.item_id[candidates], -score[candidates]))][:limit]
    options = []
    for rank, i in enumerate(order, start=1):
        price = int(items.points_price[i])
        cash_price = round(int(items.market_price_minor[i]) * float(items.discount_coefficient[i]))
        pay = tuple(points_cash_options(programme, price, cash_price, member.balance))
        gap = max(price - member.balance, 0)
        usable = pay[0].points if pay else 0
        expiring_used = min(member.expiring_points, usable)
        reasons = [Reason.INDEX_ABOVE_THRESHOLD if idx.points_better(index[i], threshold)
                   else Reason.INDEX_BELOW_THRESHOLD]
        if vacuum[i]:
            reasons.append(Reason.VACUUM_ZONE)
        if gap:
            reasons.append(Reason.NOT_AFFORDABLE)
        if expiring_used:
            reasons.append(Reason.USES_EXPIRING_POINTS)
        if prob is not None and prob[i] >= HIGH_PROPENSITY:
            reasons.append(Reason.HIGH_PROPENSITY)
        if items.discount_coefficient[i] < 1.0:
            reasons.append(Reason.ON_PROMOTION)
        factors = idx.IndexFactors(
            value_coefficient=float(vc[i]), demand_match=float(dm[i]),
            behaviour_weight=float(bw[i]), discount_coefficient=float(dc[i]),
            recommendation_index=float(index[i]), vacuum=bool(vacuum[i]))
        options.append(Option(
            item_id=int(items.item_id[i]), rank=rank, score=float(score[i]), factors=factors,
            propensity=None if prob is None else float(prob[i]), points_price=price,
            points_cash=pay, points_gap=gap,
            spend_to_close_gap_minor=spend_to_earn(programme, gap, member.tier_multiplier),
            expiring_points_used=expiring_used, category=str(items.category[i]),
            reasons=tuple(reasons)))
    return options


def unlocks_in_reach(
    programme: Programme, member: Member, within_share: float = 0.5
) -> list[Unlock]:
    """Category unlocks not yet reached whose gap is at most `within_share` of the threshold,
    nearest first."""
    out = []
    for category, threshold in programme.unlocks.items():
        gap = threshold - member.balance
        if 0 < gap <= within_share * threshold:
            out.append(Unlock(category, threshold, gap,
                              spend_to_earn(programme, gap, member.tier_multiplier)))
    return sorted(out, key=lambda u: (u.points_gap, u.category))
