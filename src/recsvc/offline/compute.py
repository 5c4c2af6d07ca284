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
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.config import Programme
from recsvc.core import ledger
from recsvc.core.ledger import DAY_US, US, instant
from recsvc.data import schema, views
from recsvc.data.columns import NULL_US, as_i64, as_us, kind_codes
from recsvc.offline.expiry import expiring_points
from recsvc.offline.timeline import Timeline

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

EXPIRING_WINDOW_DAYS = 30
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


def features_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "features"


# --------------------------------------------------------------------------------------------
# Small array helpers.
# --------------------------------------------------------------------------------------------
def day_end(us: I64) -> I64:
    """The end of the UTC day holding each instant (the next midnight)."""
    return (us // DAY_US + 1) * DAY_US


def float_column(values: F64, valid: B) -> pa.Array:
    """A float64 column, null where not `valid`."""
    return pa.array(np.where(valid, values, 0.0), type=pa.float64(), mask=~valid)


def int_column(values: I64, valid: B | None = None) -> pa.Array:
    """An int64 column, null where not `valid` (None: none null)."""
    if valid is None:
        return pa.array(values, type=pa.int64())
    return pa.array(np.where(valid, values, 0), type=pa.int64(), mask=~valid)


def ts_column(us: I64) -> pa.Array:
    """A timestamp column of the snapshots' type from µs since the epoch."""
    return pa.array(us, type=pa.int64()).cast(TS)


def map_ids(ids_sorted: I64, ids: I64, table: str) -> tuple[I64, B]:
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
# Members.
# --------------------------------------------------------------------------------------------
@dataclass
class MemberInputs:
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


def member_inputs(tables: Mapping[str, pa.Table], history_start: int,
                   as_of: int, categories: list[str] | None = None) -> MemberInputs:
    """`categories`: the vocabulary of the top-3, when the tables are one partition of the
    members (it is drawn from every order)."""
    members = tables["members"].sort_by("member_id")
    ids = as_i64(members["member_id"])
    signup = as_us(members["signup_at"])
    signup_known = signup != NULL_US
    # an unknown signup is taken as "before the history", so the member still gets snapshots
    signup = np.where(signup_known, signup, history_start - DAY_US)

    if categories is None:
        categories = top_categories([tables["orders"]["category"]])

    def events(name: str, *cols: str) -> tuple[I64, ...]:
        tab = tables[name]
        ts = as_us(tab["ts"])
        mi, keep = map_ids(ids, as_i64(tab["member_id"]), name)
        keep &= ts < as_of
        extra = [_events_col(tab, col, categories)[keep] for col in cols]
        return _by_member(mi[keep], ts[keep], *extra)

    return MemberInputs(
        ids=ids, signup=signup, signup_known=signup_known,
        age_band=members["age_band"].combine_chunks(),
        orders=events("orders", "amount_minor", "category"),
        ledger=events("ledger", "points", "expires_at", "kind"),
        redemptions=events("redemptions"),
        exposures=events("exposures", "surface"),
        categories=categories,
    )


def top_categories(columns: Iterable[pa.Array | pa.ChunkedArray]) -> list[str]:
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
    first = day_end(signup)
    period = period_days * DAY_US
    k0 = np.maximum(0, -(-(history_start - first) // period))
    k1 = np.where(first <= as_of, (as_of - first) // period, -1)
    count = np.maximum(k1 - k0 + 1, 0)
    w_mi = np.repeat(np.arange(n, dtype=np.int64), count)
    offset = np.arange(count.sum(), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    w_t = first[w_mi] + (k0[w_mi] + offset) * period
    e_t = day_end(event_ts)
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
        hi, lo = Timeline(o_mi[sel], o_ts[sel]).windows(mi, t, (365,))
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
        out.append(float_column(c / np.maximum(n365, 1), has))
    return out


def _gap_std(orders: Timeline, start: I64, hi: I64, first: I64, last: I64) -> F64:
    """The sample standard deviation, in days, of each member's gaps between consecutive
    orders (positions start..hi-1 of `orders`; meaningful from three orders, two gaps), from
    whole seconds in integers: n*sum(g^2) - (sum g)^2 is exact, so equal gaps give exactly 0."""
    n = np.maximum(hi - start - 1, 0)  # gaps
    total = last // US - first // US
    spread = n * orders.squared_gaps(start, hi) - total * total
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(n >= 2, spread / np.maximum(n * (n - 1), 1), np.nan)
    return np.sqrt(np.maximum(var, 0.0)) / 86400.0


def member_chunk(inp: MemberInputs, a: int, b: int, programme: Programme, history_start: int,
                  as_of: int, period_days: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    signup = inp.signup[a:b]
    o_mi, o_ts, o_amount, o_cat = _slice(inp.orders, a, b)
    l_mi, l_ts, l_points, l_exp, l_kind = _slice(inp.ledger, a, b)
    r_mi, r_ts = _slice(inp.redemptions, a, b)

    mi, t = _member_snapshots(signup, np.concatenate([o_mi, l_mi]), np.concatenate([o_ts, l_ts]),
                              history_start, as_of, period_days)

    orders = Timeline(o_mi, o_ts, {"amount": o_amount})
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
    ts = ts_column(t)

    activity = pa.Table.from_arrays([
        pa.array(ids, type=pa.int64()), ts,
        float_column((t - last) / DAY_US, has),
        int_column(hi - lo[30]), int_column(hi - lo[90]), int_column(n365),
        int_column(orders.sum("amount", lo[30], hi)), int_column(orders.sum("amount", lo[90], hi)),
        int_column(spend365),
        int_column(n_total), int_column(spend_total),
        float_column((t - signup[mi]) / DAY_US, inp.signup_known[a:b][mi]),
        float_column(spend365 / np.maximum(n365, 1), n365 > 0),
        float_column((last - first) / np.maximum(n_total - 1, 1) / DAY_US, many),
        float_column(gap_std, n_total >= 3),
        pa.array(tier_names[tier_idx], type=pa.string()),
        inp.age_band.slice(a, b - a).take(pa.array(mi)),
        *_top_category_columns(o_mi, o_ts, o_cat, inp.categories, mi, t, n365),
    ], schema=MEMBER_ACTIVITY)

    is_lapse = l_kind == ledger.KIND_EXPIRE
    led = Timeline(l_mi, l_ts, {
        "points": l_points,
        "earned": np.where(l_kind == ledger.KIND_EARN, l_points, 0),
        "burned": np.where(l_kind == ledger.KIND_BURN, -l_points, 0),
    })
    l_start = led.start(mi)
    l_hi, l_lo = led.windows(mi, t, (90,))
    red = Timeline(r_mi, r_ts)
    r_start = red.start(mi)
    r_hi, r_lo = red.windows(mi, t, (90, 365))
    r_has = r_hi > r_start
    r_last = red.ts_at(r_hi - 1, r_has)
    e_mi, e_ts, e_centre = _slice(inp.exposures, a, b)
    views = Timeline(e_mi, e_ts, {"centre": e_centre})
    views_hi, views_lo = views.windows(mi, t, (90, 365))
    replay = expiring_points(l_mi, l_ts, l_points, l_exp, is_lapse, mi, t, b - a,
                             EXPIRING_WINDOW_DAYS * DAY_US)

    points = pa.Table.from_arrays([
        pa.array(ids, type=pa.int64()), ts,
        int_column(led.sum("points", l_start, l_hi)),
        int_column(replay.expiring),
        int_column(led.sum("earned", l_lo[90], l_hi)),
        int_column(led.sum("burned", l_lo[90], l_hi)),
        int_column(r_hi - r_lo[90]),
        float_column((t - r_last) / DAY_US, r_has),
        int_column(views_hi - views_lo[90]),
        int_column(r_hi - r_lo[365]),
        int_column(views_hi - views_lo[365]),
        int_column(views.sum("centre", views_lo[90], views_hi)),
        int_column(views.sum("centre", views_lo[365], views_hi)),
    ], schema=MEMBER_POINTS)
    expiry = pa.Table.from_arrays([pa.array(ids, type=pa.int64()), ts, *replay.lists()],
                                  schema=MEMBER_EXPIRY)
    return activity, points, expiry
