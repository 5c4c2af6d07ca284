"""The frequency-cap store: how many nudges a member got in each cap's window, behind one seam.

`CapStore.reserve` applies `recsvc.core.nudges.decide` atomically: the counts are read, the
decision taken and the granted nudges recorded with nothing in between, so concurrent calls
for the same member (several workers, several replicas) never exceed a cap. Two stores:

- `RedisCapStore` (production: `RECSVC_REDIS_URL` set), the online store's own Redis, through
  the client the online reader builds (Redis, Sentinel or Cluster; short socket timeouts and no
  retries). One sorted set per member and cap (and item, for item caps):

      recsvc:<feast project>:caps:{<member id>}:<cap name>[:<item id>]

  holding one entry per nudge counted, scored by its instant in milliseconds. The braces are a
  Redis Cluster hash tag: all of a member's keys live in one slot, so one Lua script can touch
  them all. The script prunes each key's entries older than its window (ZREMRANGEBYSCORE),
  counts them (ZCARD), runs the decision and records (ZADD, then PEXPIRE by the window, so a
  member who gets no nudge for a window leaves nothing behind). It is a sliding window rather
  than fixed buckets because a cap says "at most N in ANY window_hours": with hourly or daily
  buckets two reminders could land either side of a bucket boundary minutes apart, and
  counting the window's buckets only ever approximates it. The log costs nothing here: a cap's
  key never holds more than `max` entries in its window (a few).
- `SqliteCapStore` (the embedded default): the same log in a table of a SQLite file under the
  data directory, each reservation one `BEGIN IMMEDIATE` transaction (SQLite's write lock, taken
  before the counts are read), so worker processes sharing the file are serialised. WAL
  journal: readers never wait, and a commit does not fsync (the cost of a power cut is a
  reminder sent once more, never a call failing). A call prunes the expired rows of the keys
  it counts, as the Lua script does; the rows of members never asked about again go in a
  bounded sweep at most once a minute. The service calls `reserve_async`, which runs the
  transaction on the store's own thread: waiting on the file lock never stalls the event loop.

"now" is the caller's clock (the service's, or a batch job's as-of instant), so a batch for a
past date counts in that date's windows. A store that does not answer within its timeout
raises `CapStoreUnavailable`: the caller withholds the nudges rather than risk a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from recsvc.adapters.online import REDIS_TIMEOUT_S, SQLITE_BUSY_TIMEOUT_S
from recsvc.core.nudges import CapKey, CapOutcome, Reservation, decide
from recsvc.errors import CapStoreUnavailable, ConfigError
from recsvc.settings import Settings

SQLITE_FILE = Path("caps") / "nudge_caps.sqlite"
"""Where the embedded store keeps its file, under the data directory."""
SETUP_TIMEOUT_S = 10.0
SWEEP_INTERVAL_S = 60.0
"""How often (at most) a SQLite store sweeps the expired rows of keys no call touched."""
SWEEP_ROWS = 1000
"""Most rows one sweep deletes (the rest on the next calls: a backlog never stalls one)."""
STALL_GRACE_S = 1.0
"""How much longer than its timeout `reserve_async` waits on a SQLite store that is stuck
(a stalled disk, not a lock) before giving up on it."""


def _ms(now: dt.datetime) -> int:
    return int(now.timestamp() * 1000)


def _window_ms(hours: float) -> int:
    return max(round(hours * 3_600_000), 1)


def _indexed(reservations: Sequence[Reservation]) -> dict[CapKey, tuple[int, Any]]:
    """Each distinct key of the call, numbered from 1 in order of appearance, with its cap."""
    keys: dict[CapKey, tuple[int, Any]] = {}
    for r in reservations:
        for key, cap in r.counted():
            keys.setdefault(key, (len(keys) + 1, cap))
    return keys


# --------------------------------------------------------------------------------------------
# Redis.
# --------------------------------------------------------------------------------------------
# The decision is recsvc.core.nudges.decide, step for step (tests/test_caps.py runs the same
# cases on both stores). KEYS: the call's keys. ARGV: now (ms), a token unique to the call,
# dry run (0|1), then max and window (ms) of each key, then the program: the number of
# reservations; per reservation its cap count and key indexes, its item count, and per item
# its cap count and key indexes. Returns per reservation the index of the full cap (0: granted)
# followed, per item, by the index of its full cap (0: kept).
RESERVE_LUA = """
local now = tonumber(ARGV[1])
local token = ARGV[2]
local dry = ARGV[3] == '1'
local n = #KEYS
local max, window, used = {}, {}, {}
for i = 1, n do
  max[i] = tonumber(ARGV[2 + 2 * i])
  window[i] = tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window[i])
  used[i] = redis.call('ZCARD', KEYS[i])
end
local pos = 4 + 2 * n
local function nxt()
  local v = tonumber(ARGV[pos])
  pos = pos + 1
  return v
end
local seq = 0
local function take(i)
  used[i] = used[i] + 1
  if not dry then
    seq = seq + 1
    redis.call('ZADD', KEYS[i], now, token .. ':' .. seq)
    redis.call('PEXPIRE', KEYS[i], window[i])
  end
end
local function first_full(list)
  for _, i in ipairs(list) do
    if used[i] >= max[i] then return i end
  end
  return 0
end
local out = {}
for _ = 1, nxt() do
  local caps = {}
  for j = 1, nxt() do caps[j] = nxt() end
  local stop = first_full(caps)
  out[#out + 1] = stop
  for _ = 1, nxt() do
    local item = {}
    for j = 1, nxt() do item[j] = nxt() end
    local over = 0
    if stop == 0 then
      over = first_full(item)
      if over == 0 then
        for _, i in ipairs(item) do take(i) end
      end
    end
    out[#out + 1] = over
  end
  if stop == 0 then
    for _, i in ipairs(caps) do take(i) end
  end
end
return out
"""


def key_prefix(project: str) -> str:
    return f"recsvc:{project}:caps:"


class RedisCapStore:
    """Caps in Redis: one Lua script per call (see the module docstring)."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.prefix = key_prefix(project)
        self._script = client.register_script(RESERVE_LUA)

    @classmethod
    def from_url(cls, url: str, project: str, timeout_s: float = REDIS_TIMEOUT_S, *,
                 cluster: bool = False) -> RedisCapStore:
        """A plain Redis (or, with `cluster`, the Redis Cluster a node of which is) at `url`
        with the online reader's timeouts (tests, tools)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        kind: Any = RedisCluster if cluster else redis.Redis
        client = kind.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                               retry=Retry(NoBackoff(), 0))
        return cls(client, project)

    def _key(self, member_id: int, key: CapKey) -> str:
        cap, item = key
        return f"{self.prefix}{{{member_id}}}:{cap}" + ("" if item is None else f":{item}")

    def reserve(self, member_id: int, reservations: Sequence[Reservation], now: dt.datetime,
                *, dry_run: bool = False) -> list[CapOutcome]:
        import redis

        if not reservations:
            return []
        keys = _indexed(reservations)
        by_index = {i: key for key, (i, _) in keys.items()}
        args: list[Any] = [_ms(now), uuid.uuid4().hex, int(dry_run)]
        for _, cap in keys.values():
            args += [cap.max, _window_ms(cap.window_hours)]
        args.append(len(reservations))
        for r in reservations:
            args.append(len(r.caps))
            args += [keys[(c.name, None)][0] for c in r.caps]
            args.append(len(r.items))
            for item, caps in r.items:
                args.append(len(caps))
                args += [keys[(c.name, item)][0] for c in caps]
        try:
            got = self._script(keys=[self._key(member_id, k) for k in keys], args=args)
        except redis.RedisError as exc:
            raise CapStoreUnavailable(f"Redis cap store: {exc}") from exc
        out, pos = [], 0
        for r in reservations:
            stop = int(got[pos])
            dropped = tuple((item, by_index[int(g)][0]) for (item, _), g in
                            zip(r.items, got[pos + 1:pos + 1 + len(r.items)], strict=True)
                            if int(g))
            pos += 1 + len(r.items)
            out.append(CapOutcome(True, "", dropped) if stop == 0 else
                       CapOutcome(False, by_index[stop][0]))
        return out

    async def reserve_async(self, member_id: int, reservations: Sequence[Reservation],
                            now: dt.datetime, *, dry_run: bool = False) -> list[CapOutcome]:
        """`reserve` on a thread: a Redis that stops answering (stopped, restarting, loading
        its file) costs up to the connect and socket timeouts (50 ms each) a call, which on
        the event loop would hold every other call up with it."""
        if not reservations:
            return []
        return await asyncio.to_thread(self.reserve, member_id, reservations, now,
                                       dry_run=dry_run)

    def delete_all(self) -> int:
        """Delete every cap key of the project (tests and benchmarks on a shared Redis)."""
        gone = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=self.prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                gone += self.client.delete(*batch)
                batch.clear()
        if batch:
            gone += self.client.delete(*batch)
        return int(gone)

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------------------------
# SQLite.
# --------------------------------------------------------------------------------------------
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
        keys = _indexed(reservations)
        names = {key: self._key(member_id, key) for key in keys}
        now_ms = _ms(now)
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
                        (names[key], now_ms - _window_ms(cap.window_hours))).fetchone()
                outcomes, record = decide(reservations, counts)
                if not dry_run and record:
                    conn.executemany(
                        "INSERT INTO cap_events (key, at_ms, until_ms) VALUES (?, ?, ?)",
                        [(names[k], now_ms, now_ms + _window_ms(keys[k][1].window_hours))
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


# --------------------------------------------------------------------------------------------
# Which store.
# --------------------------------------------------------------------------------------------
def open_cap_store(settings: Settings, feast_store: Any = None) -> RedisCapStore | SqliteCapStore:
    """Redis when `settings.redis_url` is set (the online store's, configured as Feast is:
    `feast_store`'s, else the settings'), else the SQLite file under the data directory."""
    if not settings.redis_url:
        return SqliteCapStore(Path(settings.data_dir) / SQLITE_FILE)
    from recsvc.adapters import feast as fstore
    from recsvc.adapters.online_redis import redis_client

    config = feast_store.config if feast_store is not None else fstore.repo_config(settings)
    with fstore.feast_errors("connect to the Redis cap store"):
        client = redis_client(config.online_store, REDIS_TIMEOUT_S)
    return RedisCapStore(client, settings.feast_project)
