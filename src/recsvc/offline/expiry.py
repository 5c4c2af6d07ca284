"""Points expiring soon, by replaying the ledger FIFO by expiry (`expiring_points`): the one
sequential piece of the feature computation, stepping through (day, n-th event of the member
that day) over many members at once with `recsvc.core.ledger.burn_fifo`. The liability report
uses it too."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from recsvc.core import ledger
from recsvc.core.ledger import DAY_US, US
from recsvc.data.columns import NULL_US

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

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
