"""The SQLite online reader: one statement per request over each view's table; decoded rows kept
until another connection commits to the file (the file's change counter, or `PRAGMA
data_version` in WAL mode)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsvc.adapters.feast import feast_errors
from recsvc.adapters.online import (
    SQLITE_BUSY_TIMEOUT_S,
    SQLITE_CACHE_ROWS,
    SQLITE_CHUNK,
    SQLITE_MMAP_BYTES,
    BaseReader,
)
from recsvc.adapters.online_plan import Plan, Services, ViewSpec
from recsvc.adapters.row_cache import RowCache

if TYPE_CHECKING:
    from feast import FeatureStore
# --------------------------------------------------------------------------------------------
# SQLite.
# --------------------------------------------------------------------------------------------
def _quote_id(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _SqlitePlan:
    """Statements of one request shape, by padded key count.

    Each statement joins a VALUES list of (row number, entity key) with every view's table
    and returns (slot, value) pairs, slot = row * width + column: SQLite computes the position,
    so Python handles two small objects per value and no entity key blobs or feature names
    (half of the time of a plain `entity_key IN (...)` select here).
    """

    def __init__(self, project: str, plan: Plan) -> None:
        width = len(plan.columns)
        self.width = width
        by_view: dict[str, list[tuple[int, str]]] = {}
        for j, c in enumerate(plan.columns):
            by_view.setdefault(c.view.stored, []).append((j, c.feature))
        self._selects = []
        for stored, cols in by_view.items():
            cases = " ".join(f"WHEN {_quote_text(f)} THEN {j}" for j, f in cols)
            table = _quote_id(f"{project}_{stored}")
            # CROSS JOIN keeps the key list outside, so each key is one probe of Feast's
            # entity_key index; a feature the plan does not want gets a NULL slot
            self._selects.append(
                f"SELECT k.i * {width} + CASE t.feature_name {cases} END, t.value "
                f"FROM k CROSS JOIN {table} AS t ON t.entity_key = k.key")
        self._sql: dict[int, str] = {}

    def sql(self, size: int) -> str:
        text = self._sql.get(size)
        if text is None:
            rows = ",".join(f"({i},?)" for i in range(size))
            text = f"WITH k(i, key) AS (VALUES {rows}) " + " UNION ALL ".join(self._selects)
            self._sql[size] = text
        return text


def _padded(n: int) -> int:
    """Key counts are padded to a power of two, so a few statements serve every request
    size and stay in sqlite3's statement cache."""
    size = 1
    while size < n:
        size *= 2
    return size


class _ChangeCounter:
    """The database file's own count of its changes, read from its header: SQLite's file
    change counter (4 bytes big-endian at offset 24), which every transaction that writes a
    rollback-journal database increments before it unlocks the file. One `pread` of the
    header costs a tenth of asking a connection for `PRAGMA data_version` (~9 µs of a
    product page's hint). A database in WAL mode (header bytes 18-19 are 2) does not keep it
    current: then `read` answers None and the connection is asked."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def read(self) -> int | None:
        header = os.pread(self.fd, 10, 18)
        if len(header) < 10 or header[0] != 1 or header[1] != 1:  # not rollback-journal
            return None
        return int.from_bytes(header[6:10], "big")

    def close(self) -> None:
        """Close this process's descriptor (after a fork, the copy the child inherited)."""
        os.close(self.fd)


class _SqliteThread:
    """One thread's connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()


class SqliteReader(BaseReader):
    """Feast's SQLite layout read with sqlite3: one read-only connection per thread.

    Decoded rows are kept per request shape (up to `cache_rows` entities each, shared by the
    threads) for as long as no other connection has committed to the file: the file's change
    counter in its header says so (`_ChangeCounter`), or in WAL mode `PRAGMA data_version`
    as one connection of its own (the probe) sees it: a thread's new connection cannot tell
    what it missed, so one connection judges for all. Any write (materialisation,
    another process) empties the cache at the next read or `read_nowait`. So a read returns
    exactly what the file holds when the read starts, and a catalogue read over and over costs
    dictionary lookups instead of ~2,800 SQLite rows for 200 items. `read_nowait` reads on
    the probe, which never waits for the lock.
    """

    def __init__(self, views: dict[str, ViewSpec],
                 services: Services, project: str,
                 path: Path, *, timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
                 mmap_bytes: int = SQLITE_MMAP_BYTES,
                 cache_rows: int = SQLITE_CACHE_ROWS) -> None:
        self.path = Path(path)
        self._timeout_s = timeout_s
        self._mmap_bytes = mmap_bytes
        self._cache_rows = cache_rows
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self.cache = RowCache(cache_rows)
        # (pid, connection, the file's change counter): opened together, in one process
        self._probe: tuple[int, sqlite3.Connection, _ChangeCounter] | None = None
        self._probe_version: tuple[str, int] | None = None
        self._probe_lock = threading.Lock()
        super().__init__(views, services, project)

    def _compile(self, plan: Plan) -> _SqlitePlan:
        return _SqlitePlan(self.project, plan)

    def _connect(self, timeout_s: float) -> sqlite3.Connection:
        # read-only: a reader must never create or change the file Feast writes
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                               timeout=timeout_s, check_same_thread=False)
        if self._mmap_bytes:
            # pages read from the OS's page cache without a read() per page (~20 % here);
            # writers cannot truncate the file under a read transaction's shared lock
            conn.execute(f"PRAGMA mmap_size={int(self._mmap_bytes)}")
        with self._lock:
            self._conns.append(conn)
        return conn

    def _thread(self) -> _SqliteThread:
        state: _SqliteThread | None = getattr(self._local, "state", None)
        # a connection must not cross a fork (`serve --workers N`): the pid says whose it is
        if state is None or state.pid != os.getpid():
            state = self._local.state = _SqliteThread(self._connect(self._timeout_s))
        return state

    def read_nowait(self, service_name: str, entity_key: str,
                    ids: Sequence[Any]) -> Mapping[str, list[Any]] | None:
        """`read_service` if it needs no wait for SQLite's lock, else None (nothing read): on
        a connection of its own that never waits, rows held while no connection has
        committed since, the others read from the file (in the OS's page cache: CPU work).
        When rows must be read from the file while a writer holds its lock it answers None,
        and the caller reads on a thread."""
        if not ids or not self._cache_rows:
            return None
        plan = self._service_plan(service_name, entity_key)
        keys = plan.codec.keys(ids)
        with self._probe_lock:
            try:
                conn = self._synced()
                return self.cache.read(plan, keys, lambda p, k: self._fetch_on(conn, p, k))
            except sqlite3.Error:  # locked by a writer's commit, or worse: a thread will tell
                return None

    def _synced(self) -> sqlite3.Connection:
        """The probe connection, after dropping the cache if anyone committed since it last
        looked: by the file's change counter, or in WAL mode by the probe's `PRAGMA
        data_version` (counted per connection, so one connection must judge: a thread's new
        connection cannot tell what it missed; that pragma raises sqlite3.Error while a writer
        holds the lock). Under `_probe_lock`."""
        pid = os.getpid()
        if self._probe is None or self._probe[0] != pid:
            if self._probe is not None:
                self._probe[2].close()
            self._probe = (pid, self._connect(0.0), _ChangeCounter(self.path))
        _, conn, counter = self._probe
        # the file's own change counter where it keeps one, else the probe's data_version;
        # tagged, so a switch from one to the other reads as a change
        count = counter.read()
        version = (("file", count) if count is not None else
                   ("probe", conn.execute("PRAGMA data_version").fetchone()[0]))
        if version != self._probe_version:  # a commit since: drop all
            self._probe_version = version
            self.cache.clear()
        return conn

    def _read(self, plan: Plan, ids: Sequence[Any]) -> Mapping[str, list[Any]]:
        if not ids or not self._cache_rows:
            return super()._read(plan, ids)
        keys = plan.codec.keys(ids)
        with feast_errors(plan.action):
            with self._probe_lock:
                try:
                    self._synced()
                except sqlite3.Error:  # a writer commits now: what is held may predate it
                    self.cache.clear()
            return self.cache.read(plan, keys, self._fetch)

    def cache_stats(self) -> tuple[int, int, int]:
        """(hits, misses, rows held)."""
        return self.cache.hits, self.cache.misses, self.cache.size()

    def _fetch(self, plan: Plan, keys: list[bytes]) -> list[Any]:
        return self._fetch_on(self._thread().conn, plan, keys)

    def _fetch_on(self, conn: sqlite3.Connection, plan: Plan, keys: list[bytes]) -> list[Any]:
        sp: _SqlitePlan = plan.backend
        width = sp.width
        slots: list[Any] = [None] * (len(keys) * width)
        execute = conn.execute
        for start in range(0, len(keys), SQLITE_CHUNK):
            chunk = keys[start:start + SQLITE_CHUNK]
            size = _padded(len(chunk))
            # padding keys are empty blobs: no entity key is empty, so they match nothing
            params = chunk + [b""] * (size - len(chunk)) if size > len(chunk) else chunk
            base = start * width
            for slot, value in execute(sp.sql(size), params):
                if slot is not None:
                    slots[base + slot] = value
        return slots

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
        if self._probe is not None:
            self._probe[2].close()
        self._probe = None



def sqlite_path(feast_store: FeatureStore) -> Path:
    """The SQLite file as Feast resolves it (relative paths are relative to the repo)."""
    config = feast_store.config
    path = Path(config.online_store.path)
    if not path.is_absolute() and config.repo_path:
        path = Path(config.repo_path) / path
    return path
