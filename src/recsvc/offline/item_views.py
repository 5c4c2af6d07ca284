"""The items' feature views from the canonical tables: a snapshot per item and day.

`item_catalogue` holds an item's prices and its state of the day (`item_days`: discount, stock,
stamped at the end of its day, so a snapshot at t sees the state at t); `item_stats` its
exposures and redemptions over 30 and 90 days before t, conversion and stock turnover. The
members' views, and the column helpers both use, are `recsvc.offline.compute`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from recsvc.core.inventory import turnover_days
from recsvc.core.ledger import DAY_US
from recsvc.data.columns import as_i64, as_us
from recsvc.offline.compute import (
    ITEM_CATALOGUE,
    ITEM_STATS,
    day_end,
    float_column,
    int_column,
    map_ids,
    ts_column,
)
from recsvc.offline.timeline import Timeline


def item_tables(tables: Mapping[str, pa.Table], history_start: int,
                as_of: int) -> tuple[pa.Table, pa.Table]:
    """The items' two views (`item_catalogue`, `item_stats`), a row per item and day from the
    end of its creation day (or `history_start`) to `as_of`."""
    items = tables["items"].sort_by("item_id").combine_chunks()
    ids = as_i64(items["item_id"])
    first = np.maximum(day_end(as_us(items["created_at"])), history_start)
    count = np.maximum((as_of - first) // DAY_US + 1, 0)
    ii = np.repeat(np.arange(len(ids), dtype=np.int64), count)
    offset = np.arange(count.sum(), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    t = first[ii] + offset * DAY_US

    def timeline(name: str, values: tuple[str, ...] = (), inclusive: bool = False) -> Timeline:
        tab = tables[name]
        ts = as_us(tab["ts"])
        idx, ok = map_ids(ids, as_i64(tab["item_id"]), name)
        keep = ok & (ts <= as_of if inclusive else ts < as_of)
        vals = {v: tab[v].to_numpy(zero_copy_only=False)[keep] for v in values}
        return Timeline(idx[keep], ts[keep], vals, inclusive=inclusive)

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
        pa.array(ids[ii], type=pa.int64()), ts_column(t),
        items["market_price_minor"].take(take), items["points_price"].take(take),
        items["perceived_discount"].take(take),
        float_column(np.asarray(discount, dtype=np.float64), discount_ok),
        items["category"].take(take), items["points_class"].take(take),
        int_column(stock, d_has),
    ], schema=ITEM_CATALOGUE)

    views = timeline("exposures")
    v_hi, v_lo = views.windows(ii, t, (30, 90))
    reds = timeline("redemptions")
    r_hi, r_lo = reds.windows(ii, t, (30, 90))
    v30, v90 = v_hi - v_lo[30], v_hi - v_lo[90]
    r30, r90 = r_hi - r_lo[30], r_hi - r_lo[90]
    stats = pa.Table.from_arrays([
        pa.array(ids[ii], type=pa.int64()), ts_column(t),
        int_column(v30), int_column(v90), int_column(r30), int_column(r90),
        float_column(r30 / np.maximum(v30, 1), v30 > 0),
        float_column(r90 / np.maximum(v90, 1), v90 > 0),
        float_column(turnover_days(stock, r30, 30.0), (r30 > 0) & d_has),
    ], schema=ITEM_STATS)
    return catalogue, stats
