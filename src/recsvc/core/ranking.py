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
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from recsvc.config import Arm, Programme
from recsvc.core import index as idx
from recsvc.core.experiments import hint_threshold
from recsvc.core.redemption import (
    HIGH_PROPENSITY,
    PointsCash,
    Reason,
    points_cash_table,
    reasons_of,
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


class Option(NamedTuple):
    """One ranked way to spend points (immutable, and cheap to make: up to 200 a call)."""

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


def item_factors(programme: Programme, items: Catalogue,
                 positions: I64 | None = None) -> idx.ItemFactors:
    """The items' factors (at `positions`; None: every item)."""
    market, perceived, price = (items.market_price_minor, items.perceived_discount,
                                items.points_price)
    if positions is not None:
        market, perceived, price = market[positions], perceived[positions], price[positions]
    return idx.item_factors(programme.index, market / programme.currency.minor_per_unit,
                            perceived, price)


def behaviour(programme: Programme, member: Member) -> float:
    """The member's behaviour weight (the factor that depends on the member alone)."""
    return float(idx.behaviour_weight(programme.index, member.orders_90d,
                                      member.days_since_last_order, member.young))


def member_factors(programme: Programme, member: Member, items: Catalogue,
                   positions: I64 | None = None, *, item: idx.ItemFactors | None = None,
                   weight: float | None = None) -> idx.IndexFactors:
    """The index factors of the member for the items at `positions` (None: every item), one
    value per item in every field: the one computation the hints, the ranking and the
    propensity model's inputs share. `item`: the catalogue's `item_factors`, and `weight`:
    the member's `behaviour`, when the caller keeps them."""
    if item is None:
        item = item_factors(programme, items, positions)
    elif positions is not None:
        item = idx.ItemFactors(item.value_coefficient[positions], item.vacuum[positions])
    price, discount = ((items.points_price, items.discount_coefficient) if positions is None
                       else (items.points_price[positions], items.discount_coefficient[positions]))
    f = idx.pair_factors(
        programme.index, value_coeff=item.value_coefficient, vacuum=item.vacuum,
        points_price=price, item_discount=discount, balance=member.balance,
        behaviour=behaviour(programme, member) if weight is None else weight,
        high_spender=member.high_spender)
    n = len(price)
    # member-level factors come back as scalars: give every factor one value per item
    vc, dm, bw, dc, index = (idx.per_item(v, n) for v in f[:5])
    return idx.IndexFactors(vc, dm, bw, dc, index, idx.per_item(f.vacuum, n, bool))


def take(factors: idx.IndexFactors, positions: I64) -> idx.IndexFactors:
    """The factors of the items at `positions` (of factors over the whole catalogue)."""
    return idx.IndexFactors(*(np.asarray(v)[positions] for v in factors))


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
    factors: idx.IndexFactors | None = None,
    cold_start: bool = False,
) -> list[Option]:
    """The top `limit` options for the member, best first (ties: lower item id first).

    `propensity` is one probability per catalogue item, or a function scoring the shortlisted
    positions only (see the module docstring); None ranks by the index alone. `factors`: the
    member's `member_factors` over the whole catalogue, when the caller has them already.
    `cold_start`: the member is unknown to the feature store (every option says so).
    """
    threshold = hint_threshold(arm, programme.index)
    n = len(items)
    vc, dm, bw, dc, index, vacuum = factors if factors is not None else member_factors(
        programme, member, items)
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
    # Everything per option as columns first; the loop below only assembles Python objects
    # (per-element numpy access would cost microseconds each, 200 options a call).
    price = items.points_price[order]
    discount = items.discount_coefficient[order]
    cash_price = np.rint(items.market_price_minor[order] * discount).astype(np.int64)
    pay_points, pay_cash, pay_count = points_cash_table(programme, price, cash_price,
                                                        member.balance)
    gap = np.maximum(price - member.balance, 0)
    spend = spend_to_earn(programme, gap, member.tier_multiplier)
    expiring_used = np.minimum(member.expiring_points, np.where(pay_count > 0, pay_points[:, 0], 0))
    p_order = prob[order] if prob is not None else np.full(len(order), np.nan)
    above = idx.points_better(index[order], threshold)
    flags = np.stack([above, ~above, vacuum[order], gap > 0, expiring_used > 0,
                      p_order >= HIGH_PROPENSITY, discount < 1.0,
                      np.full(len(order), cold_start)], axis=1)
    reason_bits = (flags.astype(np.int64) << np.arange(len(_FLAGGED))).sum(axis=1)
    rows = zip(items.item_id[order].tolist(), price.tolist(), items.category[order].tolist(),
               vc[order].tolist(), dm[order].tolist(), bw[order].tolist(), dc[order].tolist(),
               index[order].tolist(), vacuum[order].tolist(), score[order].tolist(),
               p_order.tolist(), pay_points.tolist(), pay_cash.tolist(), pay_count.tolist(),
               gap.tolist(), spend.tolist(), expiring_used.tolist(), reason_bits.tolist(),
               strict=True)
    no_model = prob is None
    options = []
    for rank, (item, pp, category, v, d, b, c, ix, vac, sc, p, pts, cash, k, g, sp, used,
               bits) in enumerate(rows, start=1):
        options.append(Option(  # positional: the field order of Option and IndexFactors
            item, rank, sc, idx.IndexFactors(v, d, b, c, ix, vac), None if no_model else p,
            pp, tuple(map(PointsCash, pts[:k], cash[:k])), g, sp, used, str(category),
            reasons_of(_FLAGGED, bits)))
    return options


_FLAGGED = (Reason.INDEX_ABOVE_THRESHOLD, Reason.INDEX_BELOW_THRESHOLD, Reason.VACUUM_ZONE,
            Reason.NOT_AFFORDABLE, Reason.USES_EXPIRING_POINTS, Reason.HIGH_PROPENSITY,
            Reason.ON_PROMOTION, Reason.COLD_START)


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
