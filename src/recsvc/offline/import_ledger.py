"""From a log's checked rows to the canonical tables: re-sent records dropped and basket lines
merged into orders, members numbered by first purchase, and the ledger each order earns (and
lapses) by the programme rules (`build_tables`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.config import Programme
from recsvc.core import ledger
from recsvc.data import schema
from recsvc.offline.import_csv import Rows

I64 = npt.NDArray[np.int64]

# --------------------------------------------------------------------------------------------
# Orders, members and the ledger.
# --------------------------------------------------------------------------------------------
def _sorted_codes(values: pa.Array) -> tuple[I64, list[str]]:
    """Codes that follow the text order of the distinct values (null = -1), and those values.

    Codes by first appearance would make tie-breaks depend on row order; sorted ones do not.
    """
    enc = pc.dictionary_encode(values)
    order = np.asarray(pc.sort_indices(enc.dictionary), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    codes = np.r_[rank, -1][idx]  # index -1 picks the appended null code
    return codes, enc.dictionary.take(pa.array(order)).to_pylist()


def _per_day(ts_us: I64, fn: Callable[[dt.date], Any]) -> npt.NDArray[Any]:
    """`fn` of each timestamp's UTC date, computed once per distinct day."""
    days, inverse = np.unique(ts_us // ledger.DAY_US, return_inverse=True)
    epoch = dt.date(1970, 1, 1)
    table = np.array([fn(epoch + dt.timedelta(days=int(d))) for d in days])
    return table[inverse]


@dataclass
class _Orders:
    """One entry per order, grouped by customer and in time order within a customer."""

    cust: I64  # sorted customer code
    ts: I64
    amount: I64
    quantity: I64
    cat: I64  # sorted category code, -1 for none
    duplicates: int
    merged: int


def _collapse(rows: Rows, cust: I64, cat: I64) -> _Orders:
    """Drop exact duplicates and fold basket lines (same customer and time) into orders."""
    # Sorting on every column puts exact duplicates next to each other, and leaves each basket's
    # largest line (then one with a category, then the last category) last in its group.
    order = np.lexsort((cat, rows.quantity, rows.amount, rows.ts, cust))
    cust, ts, amount = cust[order], rows.ts[order], rows.amount[order]
    quantity, cat = rows.quantity[order], cat[order]
    same = ((cust[1:] == cust[:-1]) & (ts[1:] == ts[:-1]) & (amount[1:] == amount[:-1])
            & (quantity[1:] == quantity[:-1]) & (cat[1:] == cat[:-1]))
    keep = np.r_[True, ~same]
    cust, ts, amount, quantity, cat = cust[keep], ts[keep], amount[keep], quantity[keep], cat[keep]

    starts = np.flatnonzero(np.r_[True, (cust[1:] != cust[:-1]) | (ts[1:] != ts[:-1])])
    lasts = np.r_[starts[1:], len(cust)] - 1
    return _Orders(cust[starts], ts[starts], np.add.reduceat(amount, starts),
                   np.add.reduceat(quantity, starts), cat[lasts],
                   duplicates=int((~keep).sum()), merged=len(cust) - len(starts))


def _earn(o: _Orders, firsts: I64, categories: list[str], programme: Programme
          ) -> tuple[I64, I64, I64]:
    """Points earned by each order, with the expiry month and instant of those points."""
    # Tier before each order: the customer's spend on earlier orders only.
    spent = np.cumsum(o.amount)
    sizes = np.diff(np.r_[firsts, len(o.cust)])
    spend_before = spent - o.amount - np.repeat(spent[firsts] - o.amount[firsts], sizes)
    tier = ledger.tier_for_spend(programme, spend_before)
    tier_names = programme.tiers.order
    tier_mult = np.array([programme.earning.tier_multipliers[t] for t in tier_names])[tier]
    tier_months = np.array([ledger.expiry_months_for_tier(programme, t) for t in tier_names])
    cat_table = np.array([ledger.category_multiplier(programme, c) for c in [*categories, None]])
    cat_mult = cat_table[o.cat]  # code -1 picks the trailing None entry
    campaign = _per_day(o.ts, lambda d: ledger.campaign_multiplier(programme, d)).astype(float)
    points = ledger.points_earned(programme, o.amount, tier_mult, cat_mult, campaign)
    expiry_month = _per_day(o.ts, ledger.month_index).astype(np.int64) + tier_months[tier]
    months, inverse = np.unique(expiry_month, return_inverse=True)
    instants = np.array([ledger.epoch_us(ledger.expiry_instant(int(m))) for m in months],
                        dtype=np.int64)
    return points, expiry_month, instants[inverse]


def _ledger_table(member: I64, ts: I64, order_id: I64, points: I64, expiry_month: I64,
                  expires_at: I64) -> tuple[pa.Table, int, int, int]:
    """Earn entries for orders with points, expire entries for lapsed buckets; and counts."""
    earn = np.flatnonzero(points > 0)
    # A log has no burns, so a member's bucket of one expiry month lapses whole, once the file's
    # clock has passed its expiry instant.
    lapsed = earn[expires_at[earn] <= ts.max()]
    lapsed = lapsed[np.lexsort((expiry_month[lapsed], member[lapsed]))]
    lap_member, lap_month = member[lapsed], expiry_month[lapsed]
    heads = np.flatnonzero(np.r_[True, (lap_member[1:] != lap_member[:-1])
                                 | (lap_month[1:] != lap_month[:-1])][: len(lapsed)])
    exp_points = -np.add.reduceat(points[lapsed], heads) if len(lapsed) else np.zeros(0, np.int64)

    n_earn, n_exp = len(earn), len(heads)
    l_member = np.r_[member[earn], lap_member[heads]]
    l_ts = np.r_[ts[earn], expires_at[lapsed][heads]]
    l_kind = np.r_[np.ones(n_earn, dtype=np.int64), np.zeros(n_exp, dtype=np.int64)]
    l_points = np.r_[points[earn], exp_points]
    l_ref = np.r_[order_id[earn], np.full(n_exp, -1, dtype=np.int64)]
    l_expires = np.r_[expires_at[earn], np.zeros(n_exp, np.int64)]
    # Points lapse at the start of their instant, so an expiry sorts before an earn at that time.
    seq = np.lexsort((l_ref, l_member, l_kind, l_ts))
    is_earn = l_kind[seq] == 1
    table = pa.table({
        "entry_id": np.arange(len(seq), dtype=np.int64),
        "member_id": l_member[seq],
        "ts": pa.array(l_ts[seq], pa.int64()).cast(schema.TS),
        "kind": pa.array(np.where(is_earn, "earn", "expire").astype(object), pa.string()),
        "points": l_points[seq],
        "expires_at": pa.array(l_expires[seq], pa.int64(), mask=~is_earn).cast(schema.TS),
        "ref_id": pa.array(l_ref[seq], pa.int64(), mask=~is_earn),
    }, schema=schema.LEDGER)
    return table, n_earn, n_exp, int(-exp_points.sum())


@dataclass
class Built:
    members: pa.Table
    orders: pa.Table
    ledger: pa.Table
    duplicates: int
    merged: int
    earn_entries: int
    expire_entries: int
    points_earned: int
    points_expired: int


def build_tables(rows: Rows, programme: Programme) -> Built:
    cust, customers = _sorted_codes(rows.customer)
    cat, categories = _sorted_codes(rows.category)
    o = _collapse(rows, cust, cat)

    # Orders are grouped by customer and in time order, so a group's head is its first order.
    firsts = np.flatnonzero(np.r_[True, o.cust[1:] != o.cust[:-1]])
    member_order = np.lexsort((o.cust[firsts], o.ts[firsts]))
    member_of_cust = np.empty(len(customers), dtype=np.int64)
    member_ids = np.arange(1, len(firsts) + 1, dtype=np.int64)  # ids start at 1
    member_of_cust[o.cust[firsts][member_order]] = member_ids
    member = member_of_cust[o.cust]
    members = pa.table({
        "member_id": member_ids,
        "external_id": pa.array(customers, pa.string()).take(
            pa.array(o.cust[firsts][member_order])),
        "signup_at": pa.array(o.ts[firsts][member_order], pa.int64()).cast(schema.TS),
        "age_band": pa.nulls(len(firsts), pa.string()),
        "source": pa.array(["imported"] * len(firsts), pa.string()),
    }, schema=schema.MEMBERS)

    points, expiry_month, expires_at = _earn(o, firsts, categories, programme)
    by_time = np.lexsort((member, o.ts))
    order_id = np.empty(len(o.ts), dtype=np.int64)
    order_id[by_time] = np.arange(len(o.ts))
    category_names = np.array([*categories, None], dtype=object)
    orders = pa.table({
        "order_id": order_id[by_time],
        "member_id": member[by_time],
        "ts": pa.array(o.ts[by_time], pa.int64()).cast(schema.TS),
        "amount_minor": o.amount[by_time],
        "quantity": o.quantity[by_time],
        "category": pa.array(category_names[o.cat[by_time]], pa.string()),
        "points_earned": points[by_time],
    }, schema=schema.ORDERS)

    ledger_table, n_earn, n_exp, expired = _ledger_table(member, o.ts, order_id, points,
                                                         expiry_month, expires_at)
    return Built(members, orders, ledger_table, o.duplicates, o.merged, n_earn, n_exp,
                  int(points.sum()), expired)
