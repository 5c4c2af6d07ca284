"""The inventory rules of SPEC §3, pure numpy over the catalogue as parallel arrays (one entry
per item); no I/O. `recsvc catalogue-report` applies them (`recsvc.reports.catalogue`).

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

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.config import Inventory, Programme
from recsvc.core import index as idx
from recsvc.core.catalogue import Alternate, Attributes, alternates

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
Obj = npt.NDArray[np.object_]

MONTH_DAYS = 30
FORECAST_MONTHS = 3
POPULAR_QUANTILE = 0.75
PRICE_CUT = 0.10


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
