"""The catalogue under stock: alternates for out-of-stock items, and the inventory rules of SPEC §3.

Pure numpy over the catalogue as parallel arrays (one entry per item); no I/O. The service uses
`alternates` on the hint path, `recsvc catalogue-report` uses everything.

Similarity of an in-stock item j to the out-of-stock item i it may replace, in [0, 1]:

    s = (0.40 [same category] + 0.20 [same points class]
         + 0.25 (½ [same gift band] + ½ closeness) + 0.15 propensity_j) / 1.00
    closeness = max(0, 1 - |ln(points_price_j / points_price_i)| / ln 4)

closeness is 1 at the same points price, ½ at twice or half of it, 0 from four times apart.
Without a propensity (no model answering; the catalogue report) its term is left out and the
rest divided by 0.85, so s stays in [0, 1]. Alternates are the most similar, ties to the lower
item id, never the item itself and never out of stock. Reasons: SAME_CATEGORY,
SAME_POINTS_CLASS, SIMILAR_POINTS_PRICE (same gift band and within a factor of 2),
HIGH_PROPENSITY (propensity >= recsvc.core.redemption.HIGH_PROPENSITY).

Inventory rules, over 30-day "months" ending at the as-of instant (the last column of a
per-month array is the latest month):

    forecast monthly redemptions = mean redemptions of the last min(3, months listed) months
    safety level                 = safety_share × forecast                        (20 %)
    turnover days                = mean daily stock over those months / (forecast / 30)
    below safety                 = stock now < safety level
    slow mover                   = turnover days > slow_mover_days                 (90)
    points-price cut             = below safety on a slow mover with stock left: see `price_cut`
    delisting candidate          = in each of the last delist_months months, viewed, and
                                   redeemed by < delist_redemption_rate of its viewers (5 %)
    popular and out of stock     = views per day in stock over the forecast months in the
                                   top quartile (by argument), stock now 0; gets alternates
                                   (per day in stock: a sold-out item is not shown, so its
                                   views alone understate how much it is wanted)

Turnover uses the months' mean stock, not today's: with today's stock "slow mover" (stock above
3 months of redemptions) and "below safety" (under 0.2 of a month) could never hold together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from recsvc.config import Inventory, Programme
from recsvc.core import index as idx
from recsvc.core.redemption import HIGH_PROPENSITY, Reason

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Obj = npt.NDArray[np.object_]

MONTH_DAYS = 30
FORECAST_MONTHS = 3
POPULAR_QUANTILE = 0.75
PRICE_CUT = 0.10
PRICE_SPAN = 4.0
"""Points prices this many times apart have no price closeness left."""
SIMILAR_PRICE_RATIO = 2.0
"""Within this factor (and in the same gift band) an alternate's price is "similar"."""
SHORTLIST = 50
"""Most candidates per item scored by the propensity model (the similarity's best)."""
BLOCK_CELLS = 1 << 16


@dataclass(frozen=True)
class Weights:
    """How much each likeness counts in the similarity (they sum to 1)."""

    category: float = 0.40
    points_class: float = 0.20
    price: float = 0.25
    propensity: float = 0.15


SIMILARITY = Weights()


class Alternate(NamedTuple):
    """An in-stock item offered in place of an out-of-stock one."""

    position: int  # in the catalogue arrays
    item_id: int
    points_price: int
    category: str
    similarity: float
    propensity: float | None
    reasons: tuple[Reason, ...]


Propensity = Callable[[I64], F64]
"""Scores catalogue positions: the member's P(redeem) for the items there."""


def gift_band(programme: Programme, points_price: Any) -> I64:
    """0 low (< gifts.low_below points), 1 mid, 2 high (> gifts.high_above), SPEC §3."""
    p = np.asarray(points_price, dtype=np.int64)
    g = programme.gifts
    return np.where(p < g.low_below, 0, np.where(p > g.high_above, 2, 1)).astype(np.int64)


def _log_price(points_price: Any) -> F64:
    """ln of each points price; NaN where it is not > 0 (no closeness to anything)."""
    p = np.asarray(points_price, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), np.nan)


def _closeness(log_ratio: F64) -> F64:
    # fmax, not maximum: a NaN (a price not > 0) gives 0
    return np.fmax(1.0 - np.abs(log_ratio) / math.log(PRICE_SPAN), 0.0)


def price_closeness(points_price: Any, other: Any) -> F64:
    """1 - |ln(a / b)| / ln(PRICE_SPAN), clipped to [0, 1]; 0 where a price is not > 0."""
    return _closeness(_log_price(points_price) - _log_price(other))


def _codes(values: Obj) -> I64:
    """The same small integer for equal values (comparing integers is 100 times cheaper)."""
    seen: dict[Any, int] = {}
    return np.fromiter((seen.setdefault(v, len(seen)) for v in values.tolist()),
                       dtype=np.int64, count=len(values))


@dataclass(frozen=True)
class Attributes:
    """What the similarity looks at, one entry per catalogue item, prepared once per catalogue
    load (the service builds it when it loads the items, not per request)."""

    item_id: I64
    category: Obj
    points_class: Obj
    points_price: I64
    stock: I64
    category_code: I64
    class_code: I64
    log_price: F64
    _bands: dict[tuple[int, int], I64] = field(default_factory=dict, init=False, repr=False,
                                               compare=False)
    """gift_band of the items per (gifts.low_below, gifts.high_above), its only other inputs."""
    _near: dict[tuple[Any, ...], dict[int, tuple[I64, F64]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    """Per (weights, count, margin, gift bands): each target's candidates and their similarity
    without propensity, which depend on the catalogue load alone, not on the member."""

    @classmethod
    def build(cls, item_id: Any, category: Any, points_class: Any, points_price: Any,
              stock: Any) -> Attributes:
        cats = np.asarray(category, dtype=object)
        classes = np.asarray(points_class, dtype=object)
        prices = np.asarray(points_price, dtype=np.int64)
        return cls(np.asarray(item_id, dtype=np.int64), cats, classes, prices,
                   np.asarray(stock, dtype=np.int64), _codes(cats), _codes(classes),
                   _log_price(prices))

    def __len__(self) -> int:
        return len(self.item_id)

    def gift_band(self, programme: Programme) -> I64:
        """`gift_band` of every item (read-only), worked out once per catalogue load and gift
        thresholds rather than on every `alternates` call."""
        g = programme.gifts
        key = (g.low_below, g.high_above)
        band = self._bands.get(key)
        if band is None:  # two threads may both work it out: the same array either way
            band = gift_band(programme, self.points_price)
            band.flags.writeable = False
            self._bands[key] = band
        return band


def alternates(
    programme: Programme,
    items: Attributes,
    targets: Any,
    *,
    propensity: F64 | Propensity | None = None,
    count: int | None = None,
    shortlist: int = SHORTLIST,
    weights: Weights = SIMILARITY,
) -> list[tuple[Alternate, ...]]:
    """For each catalogue position in `targets`, the `count` (default inventory.alternates)
    in-stock items most similar to it, most similar first (ties: lower item id first); fewer
    only when fewer other items are in stock.

    `propensity` is one probability per catalogue item, or a function scoring positions (only
    the similarity's best are scored: every item whose similarity without propensity is within
    the propensity weight of the count-th best, at most `shortlist` of them); None leaves the
    propensity out of the similarity.
    """
    count = programme.inventory.alternates if count is None else count
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    n = len(items)
    if len(t) == 0 or count <= 0 or n == 0:
        return [() for _ in t]
    w = weights
    band = items.gift_band(programme)
    margin = 0.0 if propensity is None else w.propensity
    g = programme.gifts
    memo = items._near.setdefault((w, count, margin, g.low_below, g.high_above), {})
    todo = np.asarray([x for x in dict.fromkeys(t.tolist()) if x not in memo], dtype=np.int64)
    # targets a block at a time: a (100 x 3,000) matrix is fresh memory the kernel has to map
    # (milliseconds); a block of ~64k cells is reused from the allocator's cache
    step = max(1, BLOCK_CELLS // n)
    for a in range(0, len(todo), step):
        block = todo[a:a + step]
        r, c, v = _near(items, band, block, w, count, margin)
        cuts = np.searchsorted(r, np.arange(len(block) + 1))  # rows come out in order
        for j, target in enumerate(block.tolist()):
            memo[target] = (c[cuts[j]:cuts[j + 1]], v[cuts[j]:cuts[j + 1]])
    found = [memo[x] for x in t.tolist()]
    rows = np.repeat(np.arange(len(t)), [len(c) for c, _ in found])
    cols = np.concatenate([c for c, _ in found])
    similarity = np.concatenate([v for _, v in found])
    prob: F64 | None = None
    if propensity is not None:
        rows, cols, similarity = _first(rows, cols, similarity, items.item_id,
                                        max(shortlist, count))
        prob = np.full(n, np.nan)
        union = np.unique(cols)
        if len(union):
            got = propensity(union) if callable(propensity) else propensity[union]
            prob[union] = np.asarray(got, dtype=np.float64)
        similarity = similarity + w.propensity * np.clip(np.nan_to_num(prob[cols]), 0.0, 1.0)
    else:
        similarity = similarity / (1.0 - w.propensity)
    rows, cols, similarity = _first(rows, cols, similarity, items.item_id, count)
    target = t[rows]
    same_cat = items.category_code[target] == items.category_code[cols]
    same_cls = items.class_code[target] == items.class_code[cols]
    similar_price = (band[target] == band[cols]) & (
        _closeness(items.log_price[cols] - items.log_price[target]) >= _SIMILAR_CLOSENESS)
    p_of = prob[cols] if prob is not None else np.full(len(cols), np.nan)
    out: list[list[Alternate]] = [[] for _ in t]
    for r, j, sim, p, cat, cls, price in zip(
            rows.tolist(), cols.tolist(), similarity.tolist(), p_of.tolist(), same_cat.tolist(),
            same_cls.tolist(), similar_price.tolist(), strict=True):
        has_p = not math.isnan(p)
        reasons = tuple(reason for reason, on in (
            (Reason.SAME_CATEGORY, cat), (Reason.SAME_POINTS_CLASS, cls),
            (Reason.SIMILAR_POINTS_PRICE, price),
            (Reason.HIGH_PROPENSITY, has_p and p >= HIGH_PROPENSITY)) if on)
        out[r].append(Alternate(j, int(items.item_id[j]), int(items.points_price[j]),
                                str(items.category[j]), min(max(sim, 0.0), 1.0),
                                p if has_p else None, reasons))
    return [tuple(a) for a in out]


def _near(items: Attributes, band: I64, t: I64, w: Weights, count: int,
          margin: float) -> tuple[I64, I64, F64]:
    """(row, catalogue position, similarity without propensity) of the items in stock, other
    than the target, at most `margin` below the count-th best of each target's row."""
    n = len(items)
    log_price = items.log_price
    base = np.subtract(log_price[None, :], log_price[t][:, None])  # one row per target
    np.abs(base, out=base)  # in place: no temporary the size of the matrix per term
    base *= -0.5 * w.price / math.log(PRICE_SPAN)
    base += 0.5 * w.price
    np.fmax(base, 0.0, out=base)  # the closeness term (NaN, a price not > 0: 0)
    for codes, weight in ((items.category_code, w.category), (items.class_code, w.points_class),
                          (band, 0.5 * w.price)):
        np.add(base, weight, out=base, where=codes[t][:, None] == codes[None, :])
    base[:, items.stock <= 0] = -np.inf
    base[np.arange(len(t)), t] = -np.inf  # never the item itself
    # the count-th best, repeats counted: take the best away count - 1 times (O(n) a row;
    # np.partition is ten times slower on rows with this many ties)
    work = base.copy()
    every = np.arange(len(t))
    for _ in range(min(count, n) - 1):
        work[every, work.argmax(axis=1)] = -np.inf
    kth = work.max(axis=1)
    floor = np.where(np.isfinite(kth), kth - margin, -1.0)  # -1: every item in stock
    rows, cols = np.nonzero(base >= floor[:, None])
    return rows, cols, base[rows, cols]


def _first(rows: I64, cols: I64, score: F64, item_id: I64,
           count: int) -> tuple[I64, I64, F64]:
    """Per row, the `count` best (highest score, then lowest item id), in that order."""
    order = np.lexsort((item_id[cols], -score, rows))
    rows, cols, score = rows[order], cols[order], score[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < count
    return rows[keep], cols[keep], score[keep]


_SIMILAR_CLOSENESS = 1.0 - math.log(SIMILAR_PRICE_RATIO) / math.log(PRICE_SPAN) - 1e-12


# --------------------------------------------------------------------------------------------
# Inventory rules.
# --------------------------------------------------------------------------------------------
def forecast_monthly(redemptions: Any, months_listed: Any,
                     months: int = FORECAST_MONTHS) -> F64:
    """Mean redemptions per month over the last min(months, months listed) months (at least
    one): `redemptions` is per item and month, the latest month last."""
    r = np.asarray(redemptions, dtype=np.float64)
    m = r.shape[1]
    k = np.clip(np.asarray(months_listed, dtype=np.int64), 1, min(months, m))
    recent = np.arange(m)[None, :] >= (m - k)[:, None]
    return np.where(recent, r, 0.0).sum(axis=1) / k


def safety_level(inventory: Inventory, forecast: Any) -> F64:
    """The stock under which an item needs replenishing: safety_share of a month's forecast."""
    return inventory.safety_share * np.asarray(forecast, dtype=np.float64)


def turnover_days(stock: Any, redemptions: Any, days: float) -> F64:
    """Days `stock` lasts at `redemptions` per `days`: stock / (redemptions / days); inf when
    nothing is redeemed but there is stock, 0 with no stock."""
    s = np.asarray(stock, dtype=np.float64)
    r = np.asarray(redemptions, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        days_of = s / (r / days)
    return np.where(s > 0, np.where(r > 0, days_of, np.inf), 0.0)


def slow_movers(inventory: Inventory, turnover: Any) -> B:
    return np.asarray(turnover, dtype=np.float64) > inventory.slow_mover_days


def below_safety(stock: Any, safety: Any) -> B:
    return np.asarray(stock, dtype=np.float64) < np.asarray(safety, dtype=np.float64)


def monthly_rates(viewers: Any, redeemers: Any) -> F64:
    """Share of an item's viewers who redeemed it, per month; NaN in a month without viewers."""
    v = np.asarray(viewers, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.asarray(redeemers, dtype=np.float64) / v, np.nan)


def delisting_candidates(inventory: Inventory, viewers: Any, redeemers: Any) -> B:
    """Viewed in each of the last delist_months months and redeemed by fewer than
    delist_redemption_rate of the viewers in every one of them (a month without viewers is
    no evidence: the item is not a candidate)."""
    rates = monthly_rates(viewers, redeemers)
    k = inventory.delist_months
    if rates.shape[1] < k:
        raise ValueError(f"need {k} months of views, got {rates.shape[1]}")
    last = rates[:, -k:]
    return np.all(~np.isnan(last) & (last < inventory.delist_redemption_rate), axis=1)


def popular(views: Any, quantile: float = POPULAR_QUANTILE) -> B:
    """Items viewed at least as often as the `quantile` of all items' views (0.75: the top
    quartile), and at least once."""
    v = np.asarray(views, dtype=np.float64)
    if len(v) == 0:
        return np.zeros(0, dtype=bool)
    return (v > 0) & (v >= np.quantile(v, quantile))


def price_cut(programme: Programme, points_price: Any, market_price_minor: Any,
              perceived_discount: Any, cut: float = PRICE_CUT) -> tuple[I64, F64]:
    """The suggested lower points price and the value coefficient at it: (0, NaN) when there
    is none.

    The whole burning step (burning.min_points_step, so it can be paid in the steps the
    programme deducts in) nearest to (1 - cut) × the price, and strictly below the price; lower
    still if needed so that the value per point is at or above the vacuum threshold (a cut
    raises it: an item already out of the vacuum zone stays out, one inside is lifted out). No
    suggestion when that is under one step.
    """
    if not 0 < cut < 1:
        raise ValueError(f"cut must be in (0, 1), got {cut}")
    step = programme.burning.min_points_step
    rules = programme.index
    p = np.asarray(points_price, dtype=np.int64)
    market = np.asarray(market_price_minor, dtype=np.float64) / programme.currency.minor_per_unit
    disc = np.asarray(perceived_discount, dtype=np.float64)
    nearest = np.floor(p * (1.0 - cut) / step + 0.5).astype(np.int64) * step
    new = np.minimum(nearest, (p - 1) // step * step)
    new = np.minimum(new, idx.max_points_price(rules, market, disc, step))

    def vc_at(price: I64) -> F64:
        return np.asarray(idx.value_coefficient(market, disc, price, rules.campaign_multiplier),
                          dtype=np.float64)

    ok = (p > 0) & (new >= step)
    new = np.where(ok, new, 0)
    return new, np.where(ok, vc_at(np.where(ok, new, 1)), np.nan)


@dataclass(frozen=True)
class ItemHistory:
    """The catalogue at an as-of instant and its recent months (per-month arrays: one row
    per item, one column per 30-day month, the latest last)."""

    item_id: I64
    category: Obj
    points_class: Obj
    points_price: I64
    market_price_minor: I64
    perceived_discount: F64
    stock: I64  # now
    mean_stock: F64  # mean daily stock over the forecast months
    days_in_stock: I64  # days of the forecast months that ended with stock
    months_listed: I64  # months (started) since the item was listed
    redemptions: I64
    views: I64  # exposures
    viewers: I64  # distinct members shown the item
    redeemers: I64  # distinct members who redeemed it

    def __len__(self) -> int:
        return len(self.item_id)


@dataclass(frozen=True)
class Assessment:
    """Every figure and flag of the catalogue report, one entry per item."""

    forecast: F64
    safety_level: F64
    turnover_days: F64
    views: I64  # over the forecast months
    views_per_day: F64  # views / days in stock (at least one) over the forecast months
    redemption_rate: F64  # redeemers / viewers over the forecast months (member-months)
    last_rates: F64  # per month, the last delist_months months
    value_coefficient: F64
    vacuum: B
    out_of_stock: B
    below_safety: B
    slow_mover: B
    price_cut: B
    suggested_points_price: I64  # 0: none
    value_coefficient_after: F64  # NaN: none
    delist: B
    popular: B
    popular_out_of_stock: B
    alternates: list[tuple[Alternate, ...]] = field(default_factory=list)


def assess(programme: Programme, items: ItemHistory, *, months: int = FORECAST_MONTHS,
           popular_quantile: float = POPULAR_QUANTILE, cut: float = PRICE_CUT) -> Assessment:
    """Apply every inventory rule (see the module docstring) to the catalogue."""
    inv = programme.inventory
    forecast = forecast_monthly(items.redemptions, items.months_listed, months)
    safety = safety_level(inv, forecast)
    turnover = turnover_days(items.mean_stock, forecast, MONTH_DAYS)
    k = np.clip(items.months_listed, 1, months)
    recent = np.arange(items.views.shape[1])[None, :] >= (items.views.shape[1] - k)[:, None]
    views = np.where(recent, items.views, 0).sum(axis=1)
    viewers = np.where(recent, items.viewers, 0).sum(axis=1)
    rate = monthly_rates(viewers[:, None], np.where(recent, items.redeemers, 0)
                         .sum(axis=1)[:, None])[:, 0]
    vc, vacuum = idx.item_factors(programme.index,
                                  items.market_price_minor / programme.currency.minor_per_unit,
                                  items.perceived_discount, items.points_price)
    out = items.stock <= 0
    low = below_safety(items.stock, safety)
    slow = slow_movers(inv, turnover)
    new_price, vc_after = price_cut(programme, items.points_price, items.market_price_minor,
                                    items.perceived_discount, cut)
    # a shelf with nothing left has nothing to clear at any price
    cutting = low & slow & ~out & (new_price > 0)
    per_day = views / np.maximum(items.days_in_stock, 1)
    hot = popular(per_day, popular_quantile)
    wanted = hot & out
    alts: list[tuple[Alternate, ...]] = [() for _ in range(len(items))]
    where = np.flatnonzero(wanted)
    if len(where):
        similar = Attributes.build(items.item_id, items.category, items.points_class,
                                   items.points_price, items.stock)
        for pos, found in zip(where.tolist(), alternates(programme, similar, where),
                              strict=True):
            alts[pos] = found
    return Assessment(
        forecast=forecast, safety_level=safety, turnover_days=turnover, views=views,
        views_per_day=per_day,
        redemption_rate=rate,
        last_rates=monthly_rates(items.viewers, items.redeemers)[:, -inv.delist_months:],
        value_coefficient=vc, vacuum=vacuum,
        out_of_stock=out, below_safety=low, slow_mover=slow, price_cut=cutting,
        suggested_points_price=np.where(cutting, new_price, 0),
        value_coefficient_after=np.where(cutting, vc_after, np.nan),
        delist=delisting_candidates(inv, items.viewers, items.redeemers),
        popular=hot, popular_out_of_stock=wanted, alternates=alts)
