"""Frequency caps in a SQLite file under the data directory, the embedded default: the same
log as Redis's in a table, each reservation one `BEGIN IMMEDIATE` transaction
(`recsvc.adapters.caps` says why)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recsvc.adapters.caps import epoch_ms, indexed_keys, window_ms
from recsvc.adapters.online import SQLITE_BUSY_TIMEOUT_S
from recsvc.core.nudges import CapKey, CapOutcome, Reservation, decide
from recsvc.errors import CapStoreUnavailable, ConfigError

SETUP_TIMEOUT_S = 10.0
SWEEP_INTERVAL_S = 60.0
"""How often (at most) a SQLite store sweeps the expired rows of keys no call touched."""
SWEEP_ROWS = 1000
"""Most rows one sweep deletes (the rest on the next calls: a backlog never stalls one)."""
STALL_GRACE_S = 1.0
"""How much longer than its timeout `reserve_async` waits on a SQLite store that is stuck
(a stalled disk, not a lock) before giving up on it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cap_events (
    key TEXT NOT NULL,        -- '<member>:<cap>[:<item>]'
    at_ms INTEGER NOT NULL,   -- the instant the nudge was counted
    until_ms INTEGER NOT NULL -- when it leaves its cap's window (pruned then)
);
CREATE INDEX IF NOT EXISTS cap_events_key ON cap_events (key, at_ms);
CREATE INDEX IF NOT EXISTS cap_events_until ON cap_events (until_ms);
"""


class SqliteCapStore:
    """Caps in a SQLite file shared by the worker processes.

    Connections: one per thread (a `threading.local`), so callers on several threads (the
    batch job's, tests', the store's own worker) never share one; `check_same_thread=False`
    only so `close` can close them all from its thread once they are idle. Across threads and
    processes the `BEGIN IMMEDIATE` of each call serialises them on the file's write lock.

    `reserve_async` runs the same transaction on a worker thread of the store's own (one:
    SQLite takes one writer at a time anyway, and a queue in order is fairer than threads
    polling the lock in its busy handler). Its timeout covers the wait in that queue too: a
    call that waited past it is refused before touching the file, and the file lock is then
    waited on only for what is left.
    """

    def __init__(self, path: Path, timeout_s: float = SQLITE_BUSY_TIMEOUT_S, *,
                 sweep_interval_s: float = SWEEP_INTERVAL_S, sweep_rows: int = SWEEP_ROWS
                 ) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.sweep_interval_s = sweep_interval_s
        self.sweep_rows = sweep_rows
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self._next_sweep = -float("inf")  # time.monotonic(): the first call sweeps
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # workers starting together may wait on each other here: not a request's time
            with contextlib.closing(sqlite3.connect(self.path, timeout=SETUP_TIMEOUT_S)) as c:
                c.execute("PRAGMA journal_mode=WAL")
                c.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{self.path}: cannot open the frequency-cap store: {exc}") \
                from None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # autocommit mode: transactions are the explicit BEGIN IMMEDIATE below
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @staticmethod
    def _key(member_id: int, key: CapKey) -> str:
        cap, item = key
        return f"{member_id}:{cap}" + ("" if item is None else f":{item}")

    def reserve(self, member_id: int, reservations: Sequence[Reservation], now: dt.datetime,
                *, dry_run: bool = False) -> list[CapOutcome]:
        """On the calling thread (the batch job, tools): blocks up to the timeout on the lock."""
        if not reservations:
            return []
        return self._reserve(member_id, reservations, now, dry_run, None)

    async def reserve_async(self, member_id: int, reservations: Sequence[Reservation],
                            now: dt.datetime, *, dry_run: bool = False) -> list[CapOutcome]:
        """`reserve` on the store's worker thread: the event loop goes on meanwhile."""
        if not reservations:
            return []
        deadline = time.monotonic() + self.timeout_s
        with self._lock:  # not while `close` shuts the worker down
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="recsvc-caps")
            job = self._worker.submit(self._reserve, member_id, reservations, now, dry_run,
                                      deadline)
        try:
            # cancelling (the caller's deadline, the stall limit) takes a job not yet started
            # off the queue; one already in its transaction finishes, and what it recorded
            # counts against the caps though it is not delivered: never a cap exceeded
            return await asyncio.wait_for(asyncio.wrap_future(job),
                                          self.timeout_s + STALL_GRACE_S)
        except TimeoutError:
            raise CapStoreUnavailable(f"SQLite cap store {self.path}: no answer within "
                                      f"{self.timeout_s + STALL_GRACE_S:g} s") from None

    def _reserve(self, member_id: int, reservations: Sequence[Reservation], now: dt.datetime,
                 dry_run: bool, deadline: float | None) -> list[CapOutcome]:
        """The transaction. `deadline` (time.monotonic()): refuse once past it, and wait on
        the lock no longer than what is left of it; None: wait up to the timeout."""
        keys = indexed_keys(reservations)
        names = {key: self._key(member_id, key) for key in keys}
        now_ms = epoch_ms(now)
        if deadline is None:
            wait_s = self.timeout_s
        else:
            wait_s = deadline - time.monotonic()
            if wait_s <= 0:
                raise CapStoreUnavailable(f"SQLite cap store {self.path}: waited over "
                                          f"{self.timeout_s:g} s behind earlier calls")
        sweep = self._sweep_due()
        swept = 0
        try:
            conn = self._conn()
            conn.execute(f"PRAGMA busy_timeout = {max(round(wait_s * 1000), 1)}")
            conn.execute("BEGIN IMMEDIATE")  # the write lock first: counts cannot go stale
            try:
                # only this call's keys, as the Lua script does: the cost of a call does not
                # grow with the table (and a sweep below catches the keys nobody asks about)
                conn.execute(f"DELETE FROM cap_events WHERE key IN "
                             f"({', '.join('?' * len(names))}) AND until_ms <= ?",
                             (*names.values(), now_ms))
                counts: dict[CapKey, int] = {}
                for key, (_, cap) in keys.items():
                    (counts[key],) = conn.execute(
                        "SELECT COUNT(*) FROM cap_events WHERE key = ? AND at_ms > ?",
                        (names[key], now_ms - window_ms(cap.window_hours))).fetchone()
                outcomes, record = decide(reservations, counts)
                if not dry_run and record:
                    conn.executemany(
                        "INSERT INTO cap_events (key, at_ms, until_ms) VALUES (?, ?, ?)",
                        [(names[k], now_ms, now_ms + window_ms(keys[k][1].window_hours))
                         for k in record])
                if sweep:
                    # members never asked about again would leave their rows forever: an
                    # occasional bounded sweep of anyone's expired rows (the until_ms index)
                    swept = conn.execute(
                        "DELETE FROM cap_events WHERE rowid IN (SELECT rowid FROM cap_events "
                        "WHERE until_ms <= ? LIMIT ?)", (now_ms, self.sweep_rows)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CapStoreUnavailable(f"SQLite cap store {self.path}: {exc}") from exc
        if swept >= self.sweep_rows:  # more left: the next call sweeps on
            with self._lock:
                self._next_sweep = -float("inf")
        return outcomes

    def _sweep_due(self) -> bool:
        """Whether this call sweeps (at most one call per sweep_interval_s in a process)."""
        at = time.monotonic()
        with self._lock:
            if at < self._next_sweep:
                return False
            self._next_sweep = at + self.sweep_interval_s
            return True

    def close(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)  # its connection is idle after this
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
