"""Dated feature snapshots from the canonical tables, written as Feast's Parquet offline store.

A snapshot at instant t (always the end of a UTC day, i.e. the next midnight) holds what was
known at t: it uses only events with ts < t, plus the item states stamped at or before t (an
`item_days` row is the state *at* its end-of-day instant). A training row at t joined point in
time (Feast picks the latest snapshot <= t) therefore never sees a later event.

Snapshot instants:
  members  every `snapshot_every_days` after the end of their signup day, the end of every day
           with an order or a ledger entry (so balances are fresh), every month start (the
           churn model's cut-offs) and the as-of instant;
  items    every day from the end of their creation day to the as-of instant.
Nothing is written before the end of the first day that holds an event (`history_start`), so
members imported with years of tenure do not get years of empty snapshots.

Everything is vectorised: each event table is sorted once by (entity, time) under a combined
int64 key, windowed counts and sums are two `searchsorted` calls and a cumulative-sum
difference, and members are processed in chunks so memory stays bounded. The one sequential
piece, FIFO-by-expiry burning for the points about to expire, steps through (day, n-th event
of the member that day) over all members of a chunk at once with `recsvc.core.ledger.burn_fifo`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.config import Programme
from recsvc.core import ledger
from recsvc.core.catalogue import turnover_days
from recsvc.core.ledger import DAY_US, US, instant
from recsvc.data import schema, views
from recsvc.data.columns import NULL_US, as_i64, as_us, kind_codes
from recsvc.engine import LOCAL, Engine, id_ranges
from recsvc.errors import DataMissing
from recsvc.progress import Stopwatch, progress

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

SNAPSHOT_EVERY_DAYS = 7
EXPIRING_WINDOW_DAYS = 30
# Combined search key: (entity index << 40) | whole seconds since 1970. 2^40 s is ~34,800 years;
# entity indices are local to a chunk, so 2^23 entities per chunk is the only limit.
KEY_SHIFT = 40
# Bump when a feature's definition changes: it is part of the fingerprint, so old snapshots
# are recomputed rather than served under a new meaning.
FEATURES_VERSION = 7
MANIFEST = "_manifest.json"
PART_ROWS = 200_000  # rows per offline-store file
# members whose views one range computes: their events are what a process holds at once
PART_MEMBERS = 100_000
PART_ITEMS = 25_000  # items whose views one range computes (a row per item and day)
# The member's favourite categories are named among the most ordered ones; a long tail of
# categories (real logs have hundreds) would cost a windowed count each for little signal.
MAX_CATEGORIES = 30
TOP_CATEGORIES = 3

TS = schema.TS
# The snapshot files' schemas, from the one definition of the views (`recsvc.data.views`).
MEMBER_ACTIVITY = views.MEMBER_ACTIVITY.arrow_schema
MEMBER_POINTS = views.MEMBER_POINTS.arrow_schema
MEMBER_EXPIRY = views.MEMBER_EXPIRY.arrow_schema
ITEM_CATALOGUE = views.ITEM_CATALOGUE.arrow_schema
ITEM_STATS = views.ITEM_STATS.arrow_schema

# The offline store: one Parquet directory per feature view, `<data_dir>/features/<view>/`.
VIEWS: dict[str, pa.Schema] = {name: view.arrow_schema for name, view in views.COMPUTED.items()}
ENTITY_KEY = {name: view.entity_key for name, view in views.COMPUTED.items()}
TIMESTAMP_FIELD = views.TIMESTAMP_FIELD

# Only the columns the features need, so a 15M-row exposure table stays at two int64 columns.
INPUT_COLUMNS: dict[str, list[str]] = {
    "members": ["member_id", "signup_at", "age_band"],
    "items": ["item_id", "category", "points_class", "market_price_minor", "points_price",
              "perceived_discount", "created_at"],
    "item_days": ["item_id", "ts", "discount_coefficient", "stock"],
    "orders": ["member_id", "ts", "amount_minor", "category"],
    "ledger": ["member_id", "ts", "kind", "points", "expires_at"],
    "redemptions": ["member_id", "item_id", "ts"],
    "exposures": ["member_id", "item_id", "ts", "surface"],
}
EVENT_TABLES = ("orders", "ledger", "redemptions", "exposures")
MEMBER_INPUTS = ("members", "orders", "ledger", "redemptions", "exposures")
MEMBER_VIEWS = ("member_activity", "member_points", "member_expiry")
ITEM_VIEWS = ("item_catalogue", "item_stats")
# What a range of items reads: the items' own inputs and their events' instants
ITEM_INPUTS: dict[str, list[str]] = {
    "items": INPUT_COLUMNS["items"],
    "item_days": INPUT_COLUMNS["item_days"],
    "redemptions": ["item_id", "ts"],
    "exposures": ["item_id", "ts"],
}


def features_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "features"


def view_dir(data_dir: Path, view: str) -> Path:
    return features_dir(data_dir) / view


# --------------------------------------------------------------------------------------------
# Small array helpers.
# --------------------------------------------------------------------------------------------
def _day_end(us: I64) -> I64:
    """The end of the UTC day holding each instant (the next midnight)."""
    return (us // DAY_US + 1) * DAY_US


def _key(entity: I64, us: I64, *, ceil: bool = False) -> I64:
    secs = -(-us // US) if ceil else us // US
    return (entity.astype(np.int64) << KEY_SHIFT) | np.clip(secs, 0, (1 << KEY_SHIFT) - 1)


def _float(values: F64, valid: B) -> pa.Array:
    return pa.array(np.where(valid, values, 0.0), type=pa.float64(), mask=~valid)


def _int(values: I64, valid: B | None = None) -> pa.Array:
    if valid is None:
        return pa.array(values, type=pa.int64())
    return pa.array(np.where(valid, values, 0), type=pa.int64(), mask=~valid)


def _ts(us: I64) -> pa.Array:
    return pa.array(us, type=pa.int64()).cast(TS)


class _Timeline:
    """One event table's rows sorted by (entity, time), for windowed counts and sums.

    `known(entity, t)` is the position just past the entity's events known at t: those with
    ts < t, or ts <= t when `inclusive` (states stamped at their instant). All query instants
    are whole seconds, so flooring (or, inclusive, ceiling) event times to seconds in the key
    keeps both comparisons exact.
    """

    def __init__(self, entity: I64, ts_us: I64, values: Mapping[str, I64] | None = None,
                 *, inclusive: bool = False) -> None:
        key = _key(entity, ts_us, ceil=inclusive)
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        self.ts = ts_us[order]
        self.values = {name: np.asarray(v)[order] for name, v in (values or {}).items()}
        self.inclusive = inclusive
        self._cumsums: dict[str, I64] = {}
        self._gap_squares: I64 | None = None

    def __len__(self) -> int:
        return len(self.key)

    def start(self, entity: I64) -> I64:
        return np.searchsorted(self.key, entity.astype(np.int64) << KEY_SHIFT, "left")

    def known(self, entity: I64, t_us: I64) -> I64:
        if self.inclusive:
            return np.searchsorted(self.key, _key(entity, t_us), "right")
        return np.searchsorted(self.key, _key(entity, t_us), "left")

    def ts_at(self, pos: I64, valid: B) -> I64:
        """Event time at each position where valid (0 elsewhere, and when there are none)."""
        if not len(self.ts):
            return np.zeros(len(pos), dtype=np.int64)
        return np.where(valid, self.ts[np.clip(pos, 0, len(self.ts) - 1)], 0)

    def sum(self, name: str, lo: I64, hi: I64) -> I64:
        cs = self._cumsums.get(name)
        if cs is None:
            cs = np.concatenate([[0], np.cumsum(self.values[name], dtype=np.int64)])
            self._cumsums[name] = cs
        return cs[hi] - cs[lo]

    def squared_gaps(self, lo: I64, hi: I64) -> I64:
        """The sum of the squared gaps, in whole seconds, between consecutive events at
        positions lo..hi-1 (one entity's). Exact: the running sum may wrap around int64, but
        numpy wraps silently and the difference of two wrapped sums is the true sum, which
        for one entity's gaps ((a span of at most ~290 years)^2) fits."""
        if self._gap_squares is None:
            gaps = np.diff(self.ts // US, prepend=self.ts[:1] // US)
            self._gap_squares = np.concatenate([[0], np.cumsum(gaps * gaps, dtype=np.int64)])
        first_gap = np.minimum(lo + 1, len(self.ts))
        return self._gap_squares[np.maximum(hi, first_gap)] - self._gap_squares[first_gap]

    def windows(self, entity: I64, t_us: I64, days: tuple[int, ...]) -> tuple[I64, dict[int, I64]]:
        """(hi, {days: lo}): events of [t - days, t) are positions lo..hi-1."""
        hi = self.known(entity, t_us)
        return hi, {d: self.known(entity, t_us - d * DAY_US) for d in days}


def _map_ids(ids_sorted: I64, ids: I64, table: str) -> tuple[I64, B]:
    """Index of each id in `ids_sorted`, and which ids are known."""
    idx = np.searchsorted(ids_sorted, ids)
    idx_c = np.minimum(idx, max(len(ids_sorted) - 1, 0))
    if len(ids_sorted):
        ok = (idx < len(ids_sorted)) & (ids_sorted[idx_c] == ids)
    else:
        ok = np.zeros(len(ids), dtype=bool)
    if not ok.all():
        log.warning("%s: %d rows refer to unknown ids and are ignored", table, int((~ok).sum()))
    return idx_c, ok


# --------------------------------------------------------------------------------------------
# Points expiring soon: the FIFO-by-expiry replay.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpiryReplay:
    """Per snapshot: points lapsing within the window, and every live expiring lot as a list
    (row i's lots are `expiry_us[offsets[i]:offsets[i+1]]`, ascending, with `points`)."""

    expiring: I64
    offsets: I64
    expiry_us: I64
    points: I64

    def lists(self) -> tuple[pa.Array, pa.Array]:
        """The lots as two Arrow list columns: expiry instants in epoch seconds, points."""
        offsets = pa.array(self.offsets.astype(np.int32))
        return (pa.ListArray.from_arrays(offsets, pa.array(self.expiry_us // US)),
                pa.ListArray.from_arrays(offsets, pa.array(self.points)))


def _gather_segments(rows: I64, counts: I64, *flat: I64) -> tuple[I64, ...]:
    """Segments of `flat` (row `rows[k]` owns the k-th run of `counts[k]` values), reordered
    by row: (offsets by row, values...). Every row in 0..len(rows)-1 appears once."""
    order = np.argsort(rows, kind="stable")
    starts = np.cumsum(counts) - counts
    c = counts[order]
    offsets = np.r_[0, np.cumsum(c)].astype(np.int64)
    pick = np.repeat(starts[order], c) + (np.arange(offsets[-1]) - np.repeat(offsets[:-1], c))
    return (offsets, *(f[pick] for f in flat))


def expiring_points(
    mi: I64, ts: I64, points: I64, expires: I64, is_lapse: B,
    snap_mi: I64, snap_t: I64, n_members: int, window_us: int,
) -> ExpiryReplay:
    """Points each snapshot (snap_mi, snap_t) holds that lapse in [t, t + window), and all of
    its live lots that lapse at t or later.

    Ledger rows (member index, ts, signed points, expires_at or int64-min, lapse flag) are
    replayed in time order: a positive row adds a lot keyed by its expiry, a negative one
    (except lapses, which the replay applies itself) burns the earliest-expiring live lots
    first, as `ledger.burn_fifo` defines. Lots lapsing exactly at t are still counted at t:
    their lapse entry is stamped t, so the balance at t (events < t) still holds them too.
    """
    out = np.zeros(len(snap_mi), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    lot = (points > 0) & ~is_lapse
    burn = (points < 0) & ~is_lapse
    never = np.iinfo(np.int64).max
    exp_of_lot = np.where(expires == NULL_US, never, expires)
    columns = np.unique(exp_of_lot[lot])  # lots are kept per distinct expiry, ascending
    if len(columns) == 0:
        return ExpiryReplay(out, np.zeros(len(snap_mi) + 1, dtype=np.int64), empty, empty)
    expiring_cols = int(np.searchsorted(columns, never, "left"))  # lots that never lapse: not
    lot_rows: list[I64] = []
    lot_counts: list[I64] = []
    lot_at: list[I64] = []
    lot_points: list[I64] = []
    buckets = np.zeros((n_members, len(columns)), dtype=np.int64)
    col = np.searchsorted(columns, exp_of_lot)

    act = np.flatnonzero(lot | burn)
    mi_a, ts_a = mi[act], ts[act]
    # n-th event of the member that day: within one such step every member appears once,
    # so the step's rows update distinct bucket rows and can run as one vector operation.
    order = np.lexsort((ts_a, mi_a))
    act, mi_a, ts_a = act[order], mi_a[order], ts_a[order]
    day = ts_a // DAY_US
    new_group = np.ones(len(act), dtype=bool)
    new_group[1:] = (mi_a[1:] != mi_a[:-1]) | (day[1:] != day[:-1])
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(act)), 0))
    rank = np.arange(len(act)) - group_start
    order = np.lexsort((rank, day))
    act, day, rank = act[order], day[order], rank[order]
    step_start = np.flatnonzero(np.r_[True, (day[1:] != day[:-1]) | (rank[1:] != rank[:-1])])
    step_end = np.r_[step_start[1:], len(act)]

    r_order = np.argsort(snap_t, kind="stable")
    r_t = snap_t[r_order]
    read_start = np.flatnonzero(np.r_[True, r_t[1:] != r_t[:-1]])[: len(r_t)]
    read_end = np.r_[read_start[1:], len(r_t)]
    reads_done = 0

    def read_until(limit: int) -> int:
        g = reads_done
        while g < len(read_start) and r_t[read_start[g]] <= limit:
            rows = r_order[read_start[g]:read_end[g]]
            t = int(r_t[read_start[g]])
            c0 = np.searchsorted(columns, t, "left")
            c1 = np.searchsorted(columns, t + window_us, "left")
            held = buckets[snap_mi[rows]]
            out[rows] = held[:, c0:c1].sum(axis=1)
            live = held[:, c0:expiring_cols]
            r, c = np.nonzero(live)  # row-major: each row's lots by ascending expiry
            lot_rows.append(rows)
            lot_counts.append(np.bincount(r, minlength=len(rows)).astype(np.int64))
            lot_at.append(columns[c0 + c])
            lot_points.append(live[r, c])
            g += 1
        return g

    clipped = 0
    for s, e in zip(step_start, step_end, strict=True):
        reads_done = read_until(int(day[s]) * DAY_US)
        rows = act[s:e]
        earn = rows[lot[rows]]
        if len(earn):
            buckets[mi[earn], col[earn]] += points[earn]
        spend = rows[burn[rows]]
        if len(spend):
            who = mi[spend]
            held = buckets[who]
            lapsed = columns[None, :] <= ts[spend][:, None]
            held[lapsed] = 0
            want = -points[spend]
            have = held.sum(axis=1)
            clipped += int((want > have).sum())
            held, _ = ledger.burn_fifo(held, np.minimum(want, have))
            buckets[who] = held
    read_until(never)
    if clipped:
        log.warning("ledger: %d burns exceed the live points the replay holds; clipped", clipped)
    offsets, at, pts = _gather_segments(np.concatenate(lot_rows), np.concatenate(lot_counts),
                                        np.concatenate(lot_at), np.concatenate(lot_points))
    return ExpiryReplay(out, offsets, at, pts)


# --------------------------------------------------------------------------------------------
# Members.
# --------------------------------------------------------------------------------------------
@dataclass
class _MemberInputs:
    ids: I64
    signup: I64
    signup_known: B
    age_band: pa.Array
    # Event columns sorted by member index (the first column of each tuple):
    orders: tuple[I64, ...]  # member index, ts, amount, category code (-1: none or rare)
    ledger: tuple[I64, ...]  # member index, ts, points, expires_at, kind code
    redemptions: tuple[I64, ...]  # member index, ts
    exposures: tuple[I64, ...]  # member index, ts, on the points centre (0/1)
    categories: list[str]  # category code -> name


def _by_member(mi: I64, *cols: I64) -> tuple[I64, ...]:
    order = np.argsort(mi, kind="stable")
    return (mi[order], *(c[order] for c in cols))


def _member_inputs(tables: Mapping[str, pa.Table], history_start: int,
                   as_of: int, categories: list[str] | None = None) -> _MemberInputs:
    """`categories`: the vocabulary of the top-3, when the tables are one partition of the
    members (it is drawn from every order)."""
    members = tables["members"].sort_by("member_id")
    ids = as_i64(members["member_id"])
    signup = as_us(members["signup_at"])
    signup_known = signup != NULL_US
    # an unknown signup is taken as "before the history", so the member still gets snapshots
    signup = np.where(signup_known, signup, history_start - DAY_US)

    if categories is None:
        categories = _top_categories([tables["orders"]["category"]])

    def events(name: str, *cols: str) -> tuple[I64, ...]:
        tab = tables[name]
        ts = as_us(tab["ts"])
        mi, keep = _map_ids(ids, as_i64(tab["member_id"]), name)
        keep &= ts < as_of
        extra = [_events_col(tab, col, categories)[keep] for col in cols]
        return _by_member(mi[keep], ts[keep], *extra)

    return _MemberInputs(
        ids=ids, signup=signup, signup_known=signup_known,
        age_band=members["age_band"].combine_chunks(),
        orders=events("orders", "amount_minor", "category"),
        ledger=events("ledger", "points", "expires_at", "kind"),
        redemptions=events("redemptions"),
        exposures=events("exposures", "surface"),
        categories=categories,
    )


def _top_categories(columns: Iterable[pa.Array | pa.ChunkedArray]) -> list[str]:
    """The most ordered categories (at most MAX_CATEGORIES) over the orders' category
    columns (a table's, or a scan's batches): the vocabulary of the top-3."""
    counts: dict[str, int] = {}
    for column in columns:
        for c in pc.value_counts(column.drop_null()).to_pylist():
            counts[c["values"]] = counts.get(c["values"], 0) + c["counts"]
    ranked = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))
    return [value for value, _ in ranked[:MAX_CATEGORIES]]


def _events_col(tab: pa.Table, name: str, categories: list[str]) -> I64:
    if name == "category":
        codes = pc.index_in(tab[name], value_set=pa.array(categories, type=pa.string()))
        return np.asarray(codes.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    if name == "kind":
        return kind_codes(tab[name])
    if name == "surface":
        return as_i64(pc.equal(tab[name], "points_centre").fill_null(False).cast(pa.int64()))
    if pa.types.is_timestamp(tab.schema.field(name).type):
        return as_us(tab[name])
    return as_i64(tab[name])


def _slice(cols: tuple[I64, ...], a: int, b: int) -> tuple[I64, ...]:
    """Rows of members [a, b) from member-sorted columns, member index made chunk-local."""
    lo, hi = np.searchsorted(cols[0], [a, b])
    return (cols[0][lo:hi] - a, *(c[lo:hi] for c in cols[1:]))


def month_start_instants(first_us: int, last_us: int) -> I64:
    """Month-start instants (UTC midnight of each month's 1st, µs) in [first_us, last_us]."""
    first = instant(first_us)
    y, m = first.year, first.month
    out: list[int] = []
    while True:
        t = int(dt.datetime(y, m, 1, tzinfo=dt.UTC).timestamp()) * US
        if t > last_us:
            return np.array(out, dtype=np.int64)
        if t >= first_us:
            out.append(t)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)


def week_start_instants(first_us: int, last_us: int) -> I64:
    """Week-start instants (UTC midnight of each Monday, µs) in [first_us, last_us]."""
    week = 7 * DAY_US
    monday = 4 * DAY_US  # 1970-01-05, the first Monday after the epoch (a Thursday)
    k0 = -(-(first_us - monday) // week)
    k1 = (last_us - monday) // week
    return monday + np.arange(k0, k1 + 1, dtype=np.int64) * week


def cutoff_instants(first_us: int, last_us: int) -> I64:
    """The instants every member has a snapshot at: month starts and week starts, so the
    churn model's training cut-offs (week starts) and an as-of date at a month start are
    seen exactly, not up to a week late."""
    return np.union1d(month_start_instants(first_us, last_us),
                      week_start_instants(first_us, last_us))


def _member_snapshots(signup: I64, event_mi: I64, event_ts: I64, history_start: int,
                      as_of: int, period_days: int) -> tuple[I64, I64]:
    """(member index, instant) of every member snapshot, sorted by member then instant."""
    n = len(signup)
    first = _day_end(signup)
    period = period_days * DAY_US
    k0 = np.maximum(0, -(-(history_start - first) // period))
    k1 = np.where(first <= as_of, (as_of - first) // period, -1)
    count = np.maximum(k1 - k0 + 1, 0)
    w_mi = np.repeat(np.arange(n, dtype=np.int64), count)
    offset = np.arange(count.sum(), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    w_t = first[w_mi] + (k0[w_mi] + offset) * period
    e_t = _day_end(event_ts)
    joined = np.flatnonzero(signup < as_of)
    # every cut-off instant too (cutoff_instants)
    cuts = cutoff_instants(history_start, as_of)
    m_mi = np.repeat(np.arange(n, dtype=np.int64), len(cuts))
    m_t = np.tile(cuts, n)
    mi = np.concatenate([w_mi, event_mi, joined, m_mi])
    t = np.concatenate([w_t, e_t, np.full(len(joined), as_of, dtype=np.int64), m_t])
    keep = (t > signup[mi]) & (t >= history_start) & (t <= as_of)
    mi, t = mi[keep], t[keep]
    key = np.unique((mi << 32) | (t // DAY_US))
    return key >> 32, (key & 0xFFFFFFFF) * DAY_US


def _top_category_columns(o_mi: I64, o_ts: I64, o_cat: I64, categories: list[str], mi: I64,
                          t: I64, n365: I64) -> list[pa.Array]:
    """The member's three most ordered categories over 365 days and their shares of orders."""
    counts = np.zeros((len(mi), max(len(categories), 1)), dtype=np.int64)
    for k in range(len(categories)):
        sel = o_cat == k
        hi, lo = _Timeline(o_mi[sel], o_ts[sel]).windows(mi, t, (365,))
        counts[:, k] = hi - lo[365]
    # pad with empty columns so fewer categories than TOP_CATEGORIES still give three names
    counts = np.pad(counts, ((0, 0), (0, max(0, TOP_CATEGORIES - counts.shape[1]))))
    top = np.argsort(-counts, axis=1, kind="stable")[:, :TOP_CATEGORIES]
    names = np.asarray([*categories, *[""] * TOP_CATEGORIES], dtype=object)
    rows = np.arange(len(mi))
    out: list[pa.Array] = []
    for j in range(TOP_CATEGORIES):
        pick = top[:, j]
        c = counts[rows, pick]
        has = c > 0
        out.append(pa.array(np.where(has, names[pick], np.array(None)), type=pa.string()))
        out.append(_float(c / np.maximum(n365, 1), has))
    return out


def _gap_std(orders: _Timeline, start: I64, hi: I64, first: I64, last: I64) -> F64:
    """The sample standard deviation, in days, of each member's gaps between consecutive
    orders (positions start..hi-1 of `orders`; meaningful from three orders, two gaps), from
    whole seconds in integers: n*sum(g^2) - (sum g)^2 is exact, so equal gaps give exactly 0."""
    n = np.maximum(hi - start - 1, 0)  # gaps
    total = last // US - first // US
    spread = n * orders.squared_gaps(start, hi) - total * total
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(n >= 2, spread / np.maximum(n * (n - 1), 1), np.nan)
    return np.sqrt(np.maximum(var, 0.0)) / 86400.0


def _member_chunk(inp: _MemberInputs, a: int, b: int, programme: Programme, history_start: int,
                  as_of: int, period_days: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    signup = inp.signup[a:b]
    o_mi, o_ts, o_amount, o_cat = _slice(inp.orders, a, b)
    l_mi, l_ts, l_points, l_exp, l_kind = _slice(inp.ledger, a, b)
    r_mi, r_ts = _slice(inp.redemptions, a, b)

    mi, t = _member_snapshots(signup, np.concatenate([o_mi, l_mi]), np.concatenate([o_ts, l_ts]),
                              history_start, as_of, period_days)

    orders = _Timeline(o_mi, o_ts, {"amount": o_amount})
    start = orders.start(mi)
    hi, lo = orders.windows(mi, t, (30, 90, 365))
    n_total = hi - start
    has = n_total > 0
    last = orders.ts_at(hi - 1, has)
    first = orders.ts_at(start, has)
    spend_total = orders.sum("amount", start, hi)
    n365 = hi - lo[365]
    spend365 = orders.sum("amount", lo[365], hi)
    many = n_total >= 2
    gap_std = _gap_std(orders, start, hi, first, last)
    tier_idx = np.asarray(ledger.tier_for_spend(programme, spend_total), dtype=np.int64)
    tier_names = np.asarray(programme.tiers.order, dtype=object)
    ids = inp.ids[a:b][mi]
    ts = _ts(t)

    activity = pa.Table.from_arrays([
        pa.array(ids, type=pa.int64()), ts,
        _float((t - last) / DAY_US, has),
        _int(hi - lo[30]), _int(hi - lo[90]), _int(n365),
        _int(orders.sum("amount", lo[30], hi)), _int(orders.sum("amount", lo[90], hi)),
        _int(spend365),
        _int(n_total), _int(spend_total),
        _float((t - signup[mi]) / DAY_US, inp.signup_known[a:b][mi]),
        _float(spend365 / np.maximum(n365, 1), n365 > 0),
        _float((last - first) / np.maximum(n_total - 1, 1) / DAY_US, many),
        _float(gap_std, n_total >= 3),
        pa.array(tier_names[tier_idx], type=pa.string()),
        inp.age_band.slice(a, b - a).take(pa.array(mi)),
        *_top_category_columns(o_mi, o_ts, o_cat, inp.categories, mi, t, n365),
    ], schema=MEMBER_ACTIVITY)

    is_lapse = l_kind == ledger.KIND_EXPIRE
    led = _Timeline(l_mi, l_ts, {
        "points": l_points,
        "earned": np.where(l_kind == ledger.KIND_EARN, l_points, 0),
        "burned": np.where(l_kind == ledger.KIND_BURN, -l_points, 0),
    })
    l_start = led.start(mi)
    l_hi, l_lo = led.windows(mi, t, (90,))
    red = _Timeline(r_mi, r_ts)
    r_start = red.start(mi)
    r_hi, r_lo = red.windows(mi, t, (90, 365))
    r_has = r_hi > r_start
    r_last = red.ts_at(r_hi - 1, r_has)
    e_mi, e_ts, e_centre = _slice(inp.exposures, a, b)
    views = _Timeline(e_mi, e_ts, {"centre": e_centre})
    views_hi, views_lo = views.windows(mi, t, (90, 365))
    replay = expiring_points(l_mi, l_ts, l_points, l_exp, is_lapse, mi, t, b - a,
                             EXPIRING_WINDOW_DAYS * DAY_US)

    points = pa.Table.from_arrays([
        pa.array(ids, type=pa.int64()), ts,
        _int(led.sum("points", l_start, l_hi)),
        _int(replay.expiring),
        _int(led.sum("earned", l_lo[90], l_hi)),
        _int(led.sum("burned", l_lo[90], l_hi)),
        _int(r_hi - r_lo[90]),
        _float((t - r_last) / DAY_US, r_has),
        _int(views_hi - views_lo[90]),
        _int(r_hi - r_lo[365]),
        _int(views_hi - views_lo[365]),
        _int(views.sum("centre", views_lo[90], views_hi)),
        _int(views.sum("centre", views_lo[365], views_hi)),
    ], schema=MEMBER_POINTS)
    expiry = pa.Table.from_arrays([pa.array(ids, type=pa.int64()), ts, *replay.lists()],
                                  schema=MEMBER_EXPIRY)
    return activity, points, expiry


# --------------------------------------------------------------------------------------------
# Items.
# --------------------------------------------------------------------------------------------
def _item_tables(tables: Mapping[str, pa.Table], history_start: int,
                 as_of: int) -> tuple[pa.Table, pa.Table]:
    items = tables["items"].sort_by("item_id").combine_chunks()
    ids = as_i64(items["item_id"])
    first = np.maximum(_day_end(as_us(items["created_at"])), history_start)
    count = np.maximum((as_of - first) // DAY_US + 1, 0)
    ii = np.repeat(np.arange(len(ids), dtype=np.int64), count)
    offset = np.arange(count.sum(), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    t = first[ii] + offset * DAY_US

    def timeline(name: str, values: tuple[str, ...] = (), inclusive: bool = False) -> _Timeline:
        tab = tables[name]
        ts = as_us(tab["ts"])
        idx, ok = _map_ids(ids, as_i64(tab["item_id"]), name)
        keep = ok & (ts <= as_of if inclusive else ts < as_of)
        vals = {v: tab[v].to_numpy(zero_copy_only=False)[keep] for v in values}
        return _Timeline(idx[keep], ts[keep], vals, inclusive=inclusive)

    days = timeline("item_days", ("discount_coefficient", "stock"), inclusive=True)
    d_start = days.start(ii)
    d_pos = days.known(ii, t) - 1
    d_has = d_pos >= d_start
    d_pos = np.maximum(d_pos, 0)
    discount = days.values["discount_coefficient"][d_pos] if len(days) else np.zeros(len(ii))
    stock = days.values["stock"][d_pos] if len(days) else np.zeros(len(ii), np.int64)
    discount_ok = d_has & ~np.isnan(np.asarray(discount, dtype=np.float64))
    stock = np.nan_to_num(np.asarray(stock, dtype=np.float64)).astype(np.int64)

    take = pa.array(ii)
    catalogue = pa.Table.from_arrays([
        pa.array(ids[ii], type=pa.int64()), _ts(t),
        items["market_price_minor"].take(take), items["points_price"].take(take),
        items["perceived_discount"].take(take),
        _float(np.asarray(discount, dtype=np.float64), discount_ok),
        items["category"].take(take), items["points_class"].take(take),
        _int(stock, d_has),
    ], schema=ITEM_CATALOGUE)

    views = timeline("exposures")
    v_hi, v_lo = views.windows(ii, t, (30, 90))
    reds = timeline("redemptions")
    r_hi, r_lo = reds.windows(ii, t, (30, 90))
    v30, v90 = v_hi - v_lo[30], v_hi - v_lo[90]
    r30, r90 = r_hi - r_lo[30], r_hi - r_lo[90]
    stats = pa.Table.from_arrays([
        pa.array(ids[ii], type=pa.int64()), _ts(t),
        _int(v30), _int(v90), _int(r30), _int(r90),
        _float(r30 / np.maximum(v30, 1), v30 > 0),
        _float(r90 / np.maximum(v90, 1), v90 > 0),
        _float(turnover_days(stock, r30, 30.0), (r30 > 0) & d_has),
    ], schema=ITEM_STATS)
    return catalogue, stats


# --------------------------------------------------------------------------------------------
# The whole computation.
# --------------------------------------------------------------------------------------------
def event_span(tables: Mapping[str, pa.Table]) -> tuple[int, int] | None:
    """(earliest, latest) event instant in microseconds over the event tables, or None."""
    return _extent(tables[name]["ts"] for name in EVENT_TABLES)


def _extent(columns: Iterable[pa.Array | pa.ChunkedArray]) -> tuple[int, int] | None:
    """(lowest, highest) instant in microseconds over the columns' values, or None."""
    lows, highs = [], []
    for col in columns:
        if len(col) - col.null_count:
            mm = pc.min_max(col.cast(pa.int64()))
            lows.append(mm["min"].as_py())
            highs.append(mm["max"].as_py())
    return (min(lows), max(highs)) if lows else None


@dataclass(frozen=True)
class Span:
    history_start: int  # µs; the first snapshot instant anything may have
    as_of: int  # µs; the last snapshot instant

    @property
    def as_of_dt(self) -> dt.datetime:
        return instant(self.as_of)

    @property
    def history_start_dt(self) -> dt.datetime:
        return instant(self.history_start)


def snapshot_span(tables: Mapping[str, pa.Table], as_of: dt.datetime | None = None) -> Span:
    return span_of(event_span(tables), as_of)


def span_of(span: tuple[int, int] | None, as_of: dt.datetime | None = None) -> Span:
    """The snapshots' span for events spanning `span` (`event_span`), up to `as_of`."""
    if span is None:
        raise DataMissing("the canonical tables hold no events: nothing to compute features from")
    history_start = int(_day_end(np.array([span[0]]))[0])
    if as_of is None:
        end = int(_day_end(np.array([span[1]]))[0])
    else:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware (UTC)")
        end = int(as_of.timestamp() * US)
        if end % DAY_US:
            raise ValueError(f"as_of must be a UTC midnight (the end of a day), got {as_of}")
    return Span(history_start=min(history_start, end), as_of=end)


def iter_feature_parts(
    tables: Mapping[str, pa.Table],
    programme: Programme,
    *,
    as_of: dt.datetime | None = None,
    snapshot_every_days: int = SNAPSHOT_EVERY_DAYS,
    chunk_members: int = 20_000,
    on_members: Any = None,
) -> Iterator[tuple[str, pa.Table]]:
    """Yield (view, table part) pairs: items first, then members chunk by chunk."""
    if snapshot_every_days <= 0:
        raise ValueError("snapshot_every_days must be positive")
    span = snapshot_span(tables, as_of)
    catalogue, stats = _item_tables(tables, span.history_start, span.as_of)
    yield "item_catalogue", catalogue
    yield "item_stats", stats
    yield from _member_parts(_member_inputs(tables, span.history_start, span.as_of), programme,
                             span, snapshot_every_days, chunk_members, on_members)


def _member_parts(inp: _MemberInputs, programme: Programme, span: Span,
                  snapshot_every_days: int, chunk_members: int,
                  on_members: Any = None) -> Iterator[tuple[str, pa.Table]]:
    n = len(inp.ids)
    for a in range(0, n, chunk_members):
        b = min(a + chunk_members, n)
        activity, points, expiry = _member_chunk(inp, a, b, programme, span.history_start,
                                                 span.as_of, snapshot_every_days)
        yield "member_activity", activity
        yield "member_points", points
        yield "member_expiry", expiry
        if on_members is not None:
            on_members(b - a)


def compute_features(tables: Mapping[str, pa.Table], programme: Programme,
                     **kwargs: Any) -> dict[str, pa.Table]:
    """All the views in memory (for tests and small data): {view: table}."""
    parts: dict[str, list[pa.Table]] = {v: [] for v in VIEWS}
    for view, part in iter_feature_parts(tables, programme, **kwargs):
        parts[view].append(part)
    return {v: pa.concat_tables(p) if p else VIEWS[v].empty_table() for v, p in parts.items()}


def read_inputs(data_dir: Path, columns: Mapping[str, list[str]] = INPUT_COLUMNS,
                where: pc.Expression | None = None) -> dict[str, pa.Table]:
    return {name: schema.read_table(data_dir, name, cols, where) for name, cols in columns.items()}


def _write_view_part(out: schema.TableSetWriter, view: str, part: pa.Table) -> int:
    """One computed part of a view into the offline store; its rows."""
    # Files sorted by time and cut small let a reader of the latest days (the
    # materialisation window) skip the rest by the Parquet statistics on `ts`.
    by_time = part.sort_by([(TIMESTAMP_FIELD, "ascending"), (ENTITY_KEY[view], "ascending")])
    for offset in range(0, max(by_time.num_rows, 1), PART_ROWS):
        out.write(view, by_time.slice(offset, PART_ROWS))
    return int(by_time.num_rows)


@dataclass(frozen=True)
class InputSummary:
    """What the ranges of a snapshot build share, scanned from the tables a batch at a time."""

    span: tuple[int, int] | None  # the events' first and last instants (µs), None: no events
    categories: list[str]  # the vocabulary of the top-3 order categories (every order's)
    member_ids: I64  # ascending
    item_ids: I64  # ascending
    rows: int  # the input tables' rows


def summarise_inputs(data_dir: Path) -> InputSummary:
    """The tables' `InputSummary`, holding no more than a batch of rows of an event table."""
    rows = sum(schema.dataset(data_dir, name).count_rows() for name in INPUT_COLUMNS)
    return InputSummary(
        _extent(b.column(0) for name in EVENT_TABLES for b in _scan(data_dir, name, ["ts"])),
        _top_categories(b.column(0) for b in _scan(data_dir, "orders", ["category"])),
        np.unique(as_i64(schema.read_table(data_dir, "members", ["member_id"])["member_id"])),
        np.unique(as_i64(schema.read_table(data_dir, "items", ["item_id"])["item_id"])), rows)


def _scan(data_dir: Path, name: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    return schema.dataset(data_dir, name).to_batches(columns=columns)


def _ranges(ids: I64, parts: int) -> list[tuple[int, int]]:
    """[low, high) ranges of nearly equal width covering the ids (none for no ids)."""
    return id_ranges(int(ids[0]), int(ids[-1]) + 1, parts) if len(ids) else []


def snapshot_part(part: tuple[str, tuple[int, int]], *, data_dir: Path, programme: Programme,
                  span: Span, categories: list[str], snapshot_every_days: int,
                  chunk_members: int, staging: Path,
                  on_members: Callable[[int], Any] | None = None,
                  ) -> tuple[int, dict[str, tuple[int, int]]]:
    """One range of ids of the snapshot build: ("items", range) or ("members", range)."""
    kind, ids = part
    if kind == "items":
        return 0, item_snapshot_part(ids, data_dir=data_dir, span=span, staging=staging)
    return member_snapshot_part(ids, data_dir=data_dir, programme=programme, span=span,
                                categories=categories, snapshot_every_days=snapshot_every_days,
                                chunk_members=chunk_members, staging=staging,
                                on_members=on_members)


def item_snapshot_part(ids: tuple[int, int], *, data_dir: Path, span: Span,
                       staging: Path) -> dict[str, tuple[int, int]]:
    """The item views of the items with an id in [low, high): their rows of the items, item
    days, exposures and redemptions read here, their snapshots written into `staging` under a
    prefix of their own. Returns {view: (rows, files)}."""
    item = pc.field("item_id")
    tables = read_inputs(data_dir, ITEM_INPUTS, (item >= ids[0]) & (item < ids[1]))
    views = {v: VIEWS[v] for v in ITEM_VIEWS}
    out = schema.TableSetWriter(Path(staging), views, prefix=f"i{ids[0]:012d}-")
    written = {view: _write_view_part(out, view, table) for view, table in zip(
        ITEM_VIEWS, _item_tables(tables, span.history_start, span.as_of), strict=True)}
    files = out.parts
    return {v: (written[v], files[v]) for v in views}


def member_snapshot_part(ids: tuple[int, int], *, data_dir: Path, programme: Programme,
                         span: Span, categories: list[str], snapshot_every_days: int,
                         chunk_members: int, staging: Path,
                         on_members: Callable[[int], Any] | None = None,
                         ) -> tuple[int, dict[str, tuple[int, int]]]:
    """One range of the member views: the members with an id in [low, high), their events
    read here, their snapshots written into `staging` under a prefix of their own (`on_members`
    after each chunk of members, for a caller's progress). Returns (members, {view: (rows,
    files)})."""
    member = pc.field("member_id")
    tables = read_inputs(data_dir, {name: INPUT_COLUMNS[name] for name in MEMBER_INPUTS},
                         (member >= ids[0]) & (member < ids[1]))
    inp = _member_inputs(tables, span.history_start, span.as_of, categories)
    views = {v: VIEWS[v] for v in MEMBER_VIEWS}
    out = schema.TableSetWriter(Path(staging), views, prefix=f"m{ids[0]:012d}-")
    rows = dict.fromkeys(views, 0)
    for view, part in _member_parts(inp, programme, span, snapshot_every_days, chunk_members,
                                    on_members):
        rows[view] += _write_view_part(out, view, part)
    files = out.parts
    return len(inp.ids), {v: (rows[v], files[v]) for v in views}


def fingerprint(data_dir: Path, programme: Programme, *, as_of: dt.datetime | None,
                snapshot_every_days: int) -> str:
    """Changes whenever the tables, the options or the feature definitions change."""
    h = hashlib.sha256()
    root = schema.tables_dir(data_dir)
    if not schema.has_tables(data_dir):
        raise DataMissing(f"no canonical tables under {root}")
    for name in sorted(INPUT_COLUMNS):
        for part in sorted((root / name).glob("*.parquet")):
            st = part.stat()
            h.update(f"{name}/{part.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    options = {
        "version": FEATURES_VERSION,
        "as_of": as_of.isoformat() if as_of else None,
        "snapshot_every_days": snapshot_every_days,
        "tiers": programme.tiers.model_dump(mode="json"),
        "minor_per_unit": programme.currency.minor_per_unit,
    }
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()[:16]


def read_manifest(data_dir: Path) -> dict[str, Any] | None:
    path = features_dir(data_dir) / MANIFEST
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class FeatureBuild:
    """What `build_features` did: the snapshot rows per view and how long it took."""

    fingerprint: str
    as_of: dt.datetime
    rows: dict[str, int]
    input_rows: int
    seconds: float
    computed: bool  # False when the stored snapshots were already up to date

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def build_features(
    data_dir: Path,
    programme: Programme,
    *,
    as_of: dt.datetime | None = None,
    snapshot_every_days: int = SNAPSHOT_EVERY_DAYS,
    force: bool = False,
    chunk_members: int = 20_000,
    part_members: int = PART_MEMBERS,
    engine: Engine = LOCAL,
) -> FeatureBuild:
    """Compute the snapshots into `<data_dir>/features/`, unless they match the tables already.

    The view directories and the manifest are swapped in together (see
    `schema.atomic_tables`), so Feast never reads a half-written offline store. The views are
    computed by ranges of ids, the items' (at most PART_ITEMS items a range) and the members'
    (at most `part_members`, at least one range per worker of the engine), each range reading
    its own rows of the tables and writing its files into the same staging directory; this
    process only scans what spans them all (the events' first and last instants, the order
    categories, the ids) a batch at a time. So a process holds one range's events, whatever
    the population.
    """
    data_dir = Path(data_dir)
    fp = fingerprint(data_dir, programme, as_of=as_of, snapshot_every_days=snapshot_every_days)
    manifest = read_manifest(data_dir)
    if manifest and manifest.get("fingerprint") == fp and not force and all(
        view_dir(data_dir, v).exists() for v in VIEWS
    ):
        return FeatureBuild(fp, dt.datetime.fromisoformat(manifest["as_of"]),
                            dict(manifest["rows"]), int(manifest["input_rows"]), 0.0, False)

    watch = Stopwatch()
    summary = summarise_inputs(data_dir)
    span = span_of(summary.span, as_of)
    rows = dict.fromkeys(VIEWS, 0)
    members, items = summary.member_ids, summary.item_ids
    parts: list[tuple[str, tuple[int, int]]] = [
        *(("items", r) for r in _ranges(items, max(1, -(-len(items) // PART_ITEMS)))),
        *(("members", r) for r in _ranges(members, engine.parts(len(members), part_members)))]
    with schema.atomic_tables(features_dir(data_dir), VIEWS) as out, \
            progress("features: members", len(members), "members") as bar:
        done = engine.map(
            snapshot_part, parts,
            on_done=(lambda r: bar.update(r[0])) if engine.distributed else None,
            on_members=None if engine.distributed else bar.update,
            data_dir=data_dir, programme=programme, span=span,
            categories=summary.categories, snapshot_every_days=snapshot_every_days,
            chunk_members=chunk_members, staging=out.staging)
        for _, part_rows in done:
            for view, (n_rows, n_files) in part_rows.items():
                rows[view] += n_rows
                out.written_elsewhere(view, n_files)
        if not len(items):  # no item ranges: the item views still get their (empty) file
            for view in ITEM_VIEWS:
                _write_view_part(out, view, VIEWS[view].empty_table())
        input_rows = summary.rows
        record = {
            "fingerprint": fp,
            "as_of": span.as_of_dt.isoformat(),
            "history_start": span.history_start_dt.isoformat(),
            "snapshot_every_days": snapshot_every_days,
            "rows": rows,
            "input_rows": input_rows,
            "seconds": round(watch.seconds, 3),
        }
        (out.staging / MANIFEST).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return FeatureBuild(fp, span.as_of_dt, rows, input_rows, watch.seconds, True)
