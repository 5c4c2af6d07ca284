"""One event table's rows sorted by (entity, time), for the windowed counts and sums the
feature snapshots are made of: "orders in the 90 days before t", for every member and
instant at once, as two binary searches and a difference of cumulative sums.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from recsvc.core.ledger import DAY_US, US

I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

# Combined search key: (entity index << 40) | whole seconds since 1970. 2^40 s is ~34,800 years;
# entity indices are local to a chunk, so 2^23 entities per chunk is the only limit.
KEY_SHIFT = 40


def _key(entity: I64, us: I64, *, ceil: bool = False) -> I64:
    secs = -(-us // US) if ceil else us // US
    return (entity.astype(np.int64) << KEY_SHIFT) | np.clip(secs, 0, (1 << KEY_SHIFT) - 1)


class Timeline:
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
