"""The points book the liability report reads: every member's ledger before the as-of
instant, their balances and flows by month, the lots that will lapse, the member's history
(earning and burn rates), and what the ledger did in the months after (the backtest's actuals).

Ledger rows are assigned to months by their timestamp, except lapses and opening balances: the
ledger stamps the points lapsing at the end of a month at the first instant of the next one, so
an `expire` row belongs to the month that ends at its timestamp, and an `opening` row stamped at
a month start is part of that month's opening balance. The same rule serves the member's history
(the rates) and the backtest's actual months, so forecast and actuals count alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.core import ledger
from recsvc.core import liability as li
from recsvc.core.ledger import (
    DAY_US,
    KIND_BURN,
    KIND_EARN,
    KIND_EXPIRE,
    KIND_OPENING,
    epoch_us,
)
from recsvc.data import schema
from recsvc.data.columns import NULL_US, as_i64, as_us, kind_codes
from recsvc.errors import DataMissing

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------
# Reading the tables.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ledger:
    """The ledger rows of the members who joined before the as-of instant (all of time)."""

    mi: I64  # member index
    ts: I64
    kind: I64
    points: I64
    expires: I64  # NULL_US for rows without a lapse instant

    @property
    def key(self) -> I64:
        """The instant that decides a row's month: a lapse belongs to the month ending at it,
        and an opening balance is held from its instant on (a month starting then opens
        with it, so its burn share is not taken on an empty balance)."""
        edge = (self.kind == KIND_EXPIRE) | (self.kind == KIND_OPENING)
        return np.where(edge, self.ts - 1, self.ts)

    def select(self, keep: npt.NDArray[np.bool_]) -> Ledger:
        return Ledger(self.mi[keep], self.ts[keep], self.kind[keep], self.points[keep],
                      self.expires[keep])


@dataclass(frozen=True)
class Book:
    """The members the forecast covers and what the tables say about them."""

    ids: I64
    signup: I64  # µs; NULL_US when unknown (taken as before the history)
    ledger: Ledger
    orders: tuple[I64, I64, I64]  # member index, ts, amount (minor units)
    first_event: int  # µs: the earliest event in the tables
    last_event: int  # µs: the latest

    def joined_before(self, t_us: int) -> npt.NDArray[np.bool_]:
        return (self.signup == NULL_US) | (self.signup < t_us)

    def spend_before(self, t_us: int) -> I64:
        o_mi, o_ts, amount = self.orders
        sel = o_ts < t_us
        return np.bincount(o_mi[sel], weights=amount[sel], minlength=len(self.ids)).astype(
            np.int64)

    def recency_days(self, t_us: int) -> F64:
        """Days from each member's last order before `t_us` to it; NaN: none yet."""
        o_mi, o_ts, _ = self.orders
        sel = o_ts < t_us
        last = np.full(len(self.ids), NULL_US)
        np.maximum.at(last, o_mi[sel], o_ts[sel])
        return np.where(last == NULL_US, np.nan, (t_us - last) / DAY_US)

    def subset(self, keep: npt.NDArray[np.bool_]) -> Book:
        """The members `keep` marks (renumbered), with their ledger rows and orders."""
        new = np.cumsum(keep) - 1
        led = self.ledger.select(keep[self.ledger.mi])
        o_mi, o_ts, amount = self.orders
        o_keep = keep[o_mi]
        return Book(self.ids[keep], self.signup[keep],
                    Ledger(new[led.mi], led.ts, led.kind, led.points, led.expires),
                    (new[o_mi[o_keep]], o_ts[o_keep], amount[o_keep]), self.first_event,
                    self.last_event)

    def orders_within(self, a_us: int, b_us: int) -> F64:
        """Each member's number of orders in [a_us, b_us)."""
        o_mi, o_ts, _ = self.orders
        sel = (o_ts >= a_us) & (o_ts < b_us)
        return np.bincount(o_mi[sel], minlength=len(self.ids)).astype(np.float64)

    def ordered_within(self, a_us: int, b_us: int) -> npt.NDArray[np.bool_]:
        return self.orders_within(a_us, b_us) > 0


def read_book(data_dir: Path, as_of: dt.datetime) -> Book:
    """Members who joined before `as_of`, their ledger and their spend before it."""
    t = epoch_us(as_of)
    members = schema.read_table(data_dir, "members", ["member_id", "signup_at"])
    signup_all = as_us(members["signup_at"])
    keep = (signup_all == NULL_US) | (signup_all < t)
    ids_all = as_i64(members["member_id"])
    order = np.argsort(ids_all[keep], kind="stable")
    ids = ids_all[keep][order]
    signup = signup_all[keep][order]
    if len(ids) == 0:
        raise DataMissing(f"no members joined before {as_of:%Y-%m-%d %H:%M} UTC")

    led = schema.read_table(data_dir, "ledger", ["member_id", "ts", "kind", "points",
                                                 "expires_at"])
    kind = kind_codes(led["kind"])
    mi, found = _index(ids, as_i64(led["member_id"]))
    ledger_rows = Ledger(mi[found], as_us(led["ts"])[found], kind[found],
                         as_i64(led["points"])[found], as_us(led["expires_at"])[found])

    orders = schema.read_table(data_dir, "orders", ["member_id", "ts", "amount_minor"])
    o_mi, o_found = _index(ids, as_i64(orders["member_id"]))
    o_ts = as_us(orders["ts"])
    o_found &= o_ts != NULL_US
    book_orders = (o_mi[o_found], o_ts[o_found], as_i64(orders["amount_minor"])[o_found])
    stamps = np.concatenate([ledger_rows.ts, book_orders[1]])
    stamps = stamps[stamps != NULL_US]
    if len(stamps) == 0:
        raise DataMissing("the ledger and the orders of these members are empty")
    return Book(ids, signup, ledger_rows, book_orders, int(stamps.min()), int(stamps.max()))


def _index(ids_sorted: I64, ids: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
    pos = np.minimum(np.searchsorted(ids_sorted, ids), len(ids_sorted) - 1)
    return pos, ids_sorted[pos] == ids


def period_sums(mi: I64, key: I64, values: I64 | F64, bounds_us: I64, n: int) -> F64:
    """(members, periods): the sum of `values` of rows whose key lies in each period."""
    w = np.searchsorted(bounds_us, key, side="right") - 1
    inside = (w >= 0) & (w < len(bounds_us) - 1)
    periods = len(bounds_us) - 1
    flat = np.bincount(mi[inside] * periods + w[inside], weights=values[inside],
                       minlength=n * periods)
    return np.asarray(flat.reshape(n, periods), dtype=np.float64)


def balances_at(book: Book, bounds_us: I64) -> F64:
    """(members, bounds): points held at each bound, lapses stamped at it already applied."""
    led = book.ledger
    key = led.key
    n = len(book.ids)
    before = np.bincount(led.mi[key < bounds_us[0]], weights=led.points[key < bounds_us[0]],
                         minlength=n)
    net = period_sums(led.mi, key, led.points.astype(np.float64), bounds_us, n)
    return np.concatenate([before[:, None], before[:, None] + np.cumsum(net, axis=1)], axis=1)


def flows(book: Book, bounds_us: I64) -> dict[str, F64]:
    """(members, periods): points earned, redeemed (burnt) and expired in each period."""
    led = book.ledger
    key = led.key
    n = len(book.ids)
    out = {}
    for name, code in (("earned", KIND_EARN), ("redeemed", KIND_BURN), ("expired", KIND_EXPIRE)):
        sel = led.kind == code
        out[name] = np.abs(period_sums(led.mi[sel], key[sel], led.points[sel].astype(np.float64),
                                       bounds_us, n))
    return out


# --------------------------------------------------------------------------------------------
# The member's state at the as-of instant.
# --------------------------------------------------------------------------------------------
def months_since_epoch(us: I64) -> I64:
    """`ledger.month_index` of µs instants, vectorised."""
    return np.asarray(np.asarray(us, dtype="datetime64[us]").astype("datetime64[M]")
                      .astype(np.int64))


def lots_at(book: Book, as_of: dt.datetime) -> tuple[F64, F64, I64]:
    """(lots (members, C): column c lapses at the end of forecast month c; points that never
    lapse; points lapsing at the as-of instant itself, already gone) from the FIFO replay."""
    from recsvc.offline.expiry import expiring_points

    t = epoch_us(as_of)
    led = book.ledger.select(book.ledger.ts < t)
    n = len(book.ids)
    replay = expiring_points(led.mi, led.ts, led.points, led.expires, led.kind == KIND_EXPIRE,
                             np.arange(n, dtype=np.int64), np.full(n, t, dtype=np.int64), n, 0)
    counts = np.diff(replay.offsets)
    row = np.repeat(np.arange(n, dtype=np.int64), counts)
    # a lot lapsing at instant L lapses at the end of the month holding L - 1 µs
    col = months_since_epoch(replay.expiry_us - 1) - ledger.month_index(as_of)
    gone = col < 0  # lapsing exactly at the as-of instant (a month start): already lapsed
    lapsing_now = np.bincount(row[gone], weights=replay.points[gone], minlength=n)
    width = int(col.max()) + 1 if len(col) and not gone.all() else 0
    lots = np.zeros((n, width))
    np.add.at(lots, (row[~gone], col[~gone]), replay.points[~gone])
    balance = np.bincount(led.mi, weights=led.points, minlength=n)
    no_expiry = np.maximum(balance - lots.sum(axis=1) - lapsing_now, 0.0)
    return lots, no_expiry, lapsing_now.astype(np.int64)


def lapse_months(book: Book, programme: Programme, as_of: dt.datetime) -> I64:
    """Months after the month earned at whose end new points lapse, by the tier at as-of."""
    spend = book.spend_before(epoch_us(as_of))
    tier = np.asarray(ledger.tier_for_spend(programme, spend), dtype=np.int64)
    by_tier = np.array([ledger.expiry_months_for_tier(programme, name)
                        for name in programme.tiers.order], dtype=np.int64)
    return by_tier[np.atleast_1d(tier)]


@dataclass(frozen=True)
class History:
    bounds: list[dt.datetime]
    rates: li.Rates
    orders_per_day: F64  # the member's order rate while a customer (shrunk)
    months: F64  # exposure months per member


def history(book: Book, as_of: dt.datetime, months: int) -> History:
    """The member's monthly earning and burn share over the `months` before `as_of`."""
    bounds = li.history_bounds(as_of, months)
    b_us = np.array([epoch_us(b) for b in bounds], dtype=np.int64)
    fractions = li.month_fractions(bounds)
    start = np.where(book.signup == NULL_US, book.first_event, book.signup)
    start = np.maximum(start, book.first_event)  # no exposure before the tables begin
    lo, hi = b_us[:-1][None, :], b_us[1:][None, :]
    joined = np.clip((hi - np.maximum(lo, start[:, None])) / (hi - lo), 0.0, 1.0)
    exposure = joined * fractions[None, :]
    f = flows(book, b_us)
    opening = balances_at(book, b_us)[:, :-1]
    rates = li.estimate_rates(f["earned"], f["redeemed"], opening, exposure, fractions)
    months_in = exposure.sum(axis=1)
    o_mi, o_ts, _ = book.orders
    sel = (o_ts >= b_us[0]) & (o_ts < b_us[-1])
    orders = np.bincount(o_mi[sel], minlength=len(book.ids)).astype(np.float64)
    per_month = li.shrunk_rate(orders, months_in, li.PRIOR_MONTHS)
    return History(bounds, rates, per_month / li.DAYS_PER_MONTH, months_in)


def actuals(book: Book, bounds: list[dt.datetime]) -> dict[str, F64]:
    """What the ledger did in each forecast month the tables cover whole (totals over the same
    members): points earned, burnt, lapsed, and held at the month's end."""
    data_end = (book.last_event // DAY_US + 1) * DAY_US  # the end of the last day with data
    b_us = np.array([epoch_us(b) for b in bounds], dtype=np.int64)
    whole = int((b_us[1:] <= data_end).sum())
    if whole == 0:
        return {}
    b_us = b_us[: whole + 1]
    out = {name: v.sum(axis=0) for name, v in flows(book, b_us).items()}
    out["outstanding"] = balances_at(book, b_us)[:, 1:].sum(axis=0)
    return out
