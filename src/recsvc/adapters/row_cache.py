"""The online readers' member cache: decoded entity rows per request shape, shared between reads
and bounded, and a read served from it (`HeldColumns`) that builds columns only when asked.
What invalidates it is the reader's: Redis's client tracking (`online_redis`), the SQLite
file's version stamp (`online_sqlite`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from recsvc.adapters.online_plan import Plan, decode_columns


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _held(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row as the cache holds it: list values as tuples, so a row of numbers, strings and
    tuples of them is one object the cyclic garbage collector stops tracking (a full
    collection walks every tracked object; the cache holds up to `limit` rows)."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in row)


class RowCache:
    """Decoded entity rows per request shape (plan), up to `limit` entities each.

    Rows are shared between reads; list values are held as tuples and copied out as lists,
    so a caller that changes what it got changes nothing held. A backend stores rows only
    while nothing it knows of has changed since its fetch began (`stamp` unchanged), and
    drops what changes (`clear`, `drop`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: dict[int, dict[bytes, tuple[Any, ...]]] = {}
        self.stamp = 0  # bumped whenever rows are dropped
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.rows = {}
        self.stamp += 1

    def drop(self, keys: Sequence[bytes]) -> None:
        self.stamp += 1
        for table in list(self.rows.values()):
            for key in keys:
                table.pop(key, None)

    def size(self) -> int:
        return sum(len(t) for t in list(self.rows.values()))

    def peek(self, plan: Plan, keys: list[bytes]) -> HeldColumns | None:
        """The plan's columns for `keys` if every row is held, else None (nothing fetched)."""
        table = self.rows.get(id(plan))
        if table is None:
            return None
        rows = []
        for k in keys:
            row = table.get(k)
            if row is None:
                return None
            rows.append(row)
        self.hits += len(keys)
        return HeldColumns(plan, tuple(rows))

    def read(self, plan: Plan, keys: list[bytes],
             fetch: Callable[[Plan, list[bytes]], list[Any]]) -> HeldColumns:
        """The plan's columns for `keys`, fetching the rows not held; fetched rows are kept
        unless rows were dropped while the fetch ran (what it read may predate the change)."""
        table = self.rows.setdefault(id(plan), {})
        stamp = self.stamp
        held: dict[bytes, tuple[Any, ...]] = {}
        missing = []
        for k in dict.fromkeys(keys):
            row = table.get(k)
            if row is None:
                missing.append(k)
            else:
                held[k] = row
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            slots = fetch(plan, missing)
            if len(missing) == 1:  # a product page's member: no columns built for one row
                fresh = {missing[0]: decode_row(plan, slots)}
            else:
                decoded = decode_columns(plan, slots)
                fresh = {k: _held(row) for k, row in zip(missing, zip(*decoded.values(),
                                                                     strict=True), strict=True)}
            if self.stamp == stamp:
                if len(table) + len(missing) > self.limit:
                    table.clear()  # bounded by clearing: rarely hit, and cheaper than an LRU
                table.update(fresh)
            held.update(fresh)
        return HeldColumns(plan, tuple(held[k] for k in keys))


class HeldColumns(Mapping[str, list[Any]]):
    """A cached read: the plan's columns, built on first use from the rows the cache holds
    (`rows`, one per key asked, the held tuples themselves). A caller that kept what it derived
    from an earlier read tells that nothing changed by comparing `rows` (tuples compare their
    items by identity first: an unchanged member costs one comparison and no columns). The
    columns are copies: a caller that changes them changes nothing held."""

    __slots__ = ("_built", "_plan", "rows")

    def __init__(self, plan: Plan, rows: tuple[tuple[Any, ...], ...]) -> None:
        self._plan = plan
        self.rows = rows
        self._built: dict[str, list[Any]] | None = None

    @property
    def snapshot(self) -> tuple[Any, ...]:
        """The read as one immutable value, the names of the columns asked and the rows held,
        equal to another read's exactly when their columns are (compared by identity first).
        Strings and numbers only, like the rows: the cyclic garbage collector leaves the
        snapshots a caller keeps alone."""
        return (self._plan.names, self.rows)

    def record(self) -> dict[str, Any]:
        """A one-entity read as {feature name: value} (names without their view's prefix; list
        values as the tuples held), built from the held row without building columns."""
        return dict(zip(self._plan.short_names, self.rows[0], strict=True))

    def columns(self) -> dict[str, list[Any]]:
        if self._built is None:
            rows = self.rows
            self._built = {c.name: list(values) if c.scalar else [_copy(v) for v in values]
                           for c, values in zip(self._plan.columns, zip(*rows, strict=True),
                                                strict=True)}
        return self._built

    def __getitem__(self, name: str) -> list[Any]:
        return self.columns()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns())

    def __len__(self) -> int:
        return len(self._plan.columns)


def decode_row(plan: Plan, slots: list[Any]) -> tuple[Any, ...]:
    """One entity's fetched blobs (one per column) as the row the cache holds: `decode_columns`
    then `_held` of a single row, without building columns."""
    return _held([c.decode(blob) for c, blob in zip(plan.columns, slots, strict=True)])
