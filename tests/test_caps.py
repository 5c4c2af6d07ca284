"""The frequency-cap stores: the same decisions on Redis and SQLite, atomic under concurrency,
windows that slide and expire, keys that do not outlive them, a dead store reported."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsvc.adapters.caps import open_cap_store
from recsvc.adapters.caps_redis import RedisCapStore, key_prefix
from recsvc.adapters.caps_sqlite import SqliteCapStore
from recsvc.config import NudgeCap, load_programme, parse_programme
from recsvc.core.nudges import CapOutcome, Reservation
from recsvc.errors import CapStoreUnavailable
from recsvc.settings import Settings

P = load_programme()
CAPS = {c.name: c for c in P.nudges.caps}
ITEM = (CAPS["same_item_daily"],)
T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
MS = dt.timedelta(milliseconds=1)


def expiry(*items: int) -> Reservation:
    return Reservation("expiry", (CAPS["expiry_weekly"],), tuple((i, ITEM) for i in items))


def urgent(*items: int) -> Reservation:
    return Reservation("expiry_urgent", (CAPS["urgent_daily"],), tuple((i, ITEM) for i in items))


@pytest.fixture(params=["sqlite", "redis", "redis_cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each store the service runs on: the cap tests run on a real Redis Cluster too (a
    member's keys share one slot by their hash tag, so the Lua script stays atomic there)."""
    if request.param == "sqlite":
        s: Any = SqliteCapStore(tmp_path / "caps.sqlite")
        yield s
        s.close()
        return
    url = request.getfixturevalue(f"{request.param}_url")
    s = RedisCapStore.from_url(url, f"recsvc_test_{uuid.uuid4().hex[:10]}",
                               cluster=request.param == "redis_cluster")
    try:
        yield s
    finally:
        s.delete_all()
        s.close()


def test_a_nudge_is_granted_only_with_room_in_all_its_caps_and_then_counted(store: Any) -> None:
    # one call, two nudges sharing item 8: the first takes it, both count their kind caps
    first = store.reserve(1, [urgent(7, 8), expiry(8, 9)], T0)
    assert first == [CapOutcome(True), CapOutcome(True)]
    # within the windows: both kinds full, nothing else recorded
    assert store.reserve(1, [urgent(7), expiry(9)], T0 + HOUR) == [
        CapOutcome(False, "urgent_daily"), CapOutcome(False, "expiry_weekly")]
    # the window slides: full until exactly 24 h after the reminder, then room again
    assert store.reserve(1, [urgent(7)], T0 + 24 * HOUR - MS) == [
        CapOutcome(False, "urgent_daily")]
    later = T0 + 24 * HOUR
    assert store.reserve(1, [urgent(7, 8, 9)], later) == [CapOutcome(True)]
    assert store.reserve(1, [urgent(8, 9)], later + 24 * HOUR - MS) == [
        CapOutcome(False, "urgent_daily")]
    assert store.reserve(1, [expiry(7)], T0 + 7 * 24 * HOUR - MS) == [
        CapOutcome(False, "expiry_weekly")]
    assert store.reserve(1, [expiry(7, 8, 9)], T0 + 7 * 24 * HOUR) == [CapOutcome(True)]
    # another member is counted apart
    assert store.reserve(2, [expiry(8)], T0 + HOUR) == [CapOutcome(True)]


def test_items_over_their_cap_are_dropped_not_the_nudge(store: Any) -> None:
    p = parse_programme({"nudges": {"caps": [
        {"name": "lots", "kind": "low_balance", "max": 100, "window_hours": 24},
        {"name": "item3", "kind": "item", "max": 3, "window_hours": 24}]}})
    lots, item3 = p.nudges.caps
    nudge = Reservation("low_balance", (lots,), ((5, (item3,)), (6, (item3,))))
    for k in range(3):
        assert store.reserve(9, [nudge], T0 + k * MS) == [CapOutcome(True)]
    only6 = Reservation("low_balance", (lots,), ((6, (item3,)),))
    assert store.reserve(9, [only6], T0 + 3 * MS) == [CapOutcome(True, "", ((6, "item3"),))]
    assert store.reserve(9, [nudge], T0 + 4 * MS) == [
        CapOutcome(True, "", ((5, "item3"), (6, "item3")))]
    # the first suggestion leaves the 24 h window: one more of each fits
    assert store.reserve(9, [nudge], T0 + 24 * HOUR) == [CapOutcome(True)]


def test_a_dry_run_checks_without_recording(store: Any) -> None:
    for _ in range(3):  # the same preview, as often as wanted
        assert store.reserve(3, [expiry(1), expiry(2)], T0, dry_run=True) == [
            CapOutcome(True), CapOutcome(False, "expiry_weekly")]  # it sees its own first
    assert store.reserve(3, [expiry(1)], T0) == [CapOutcome(True)]
    assert store.reserve(3, [expiry(1)], T0 + HOUR, dry_run=True) == [
        CapOutcome(False, "expiry_weekly")]


def test_a_zero_cap_never_grants(store: Any) -> None:
    never = NudgeCap(name="never", kind="unlock_close", max=0, window_hours=1)
    assert store.reserve(4, [Reservation("unlock_close", (never,), ())], T0) == [
        CapOutcome(False, "never")]


# --------------------------------------------------------------------------------------------
# Concurrency: the same member from many callers at once never exceeds a cap.
# --------------------------------------------------------------------------------------------
BURST = parse_programme({"nudges": {"caps": [
    {"name": "three_an_hour", "kind": "expiry", "max": 3, "window_hours": 1},
    {"name": "item_five", "kind": "item", "max": 5, "window_hours": 1}]}}).nudges.caps


def burst(*items: int) -> Reservation:
    return Reservation("expiry", (BURST[0],), tuple((i, (BURST[1],)) for i in items))


def _race(store: Any, callers: int, member: int) -> list[CapOutcome]:
    start = threading.Barrier(callers)
    out: list[CapOutcome] = []
    lock = threading.Lock()

    def call(k: int) -> None:
        start.wait()
        got = store.reserve(member, [burst(1, 2 + k % 2)], T0 + k * MS)
        with lock:
            out.extend(got)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == callers  # every caller answered (a failure would be missing)
    return out


@pytest.mark.redis
def test_parallel_callers_on_the_real_redis_never_exceed_a_cap(redis_url: str,
                                                               redis_project: str) -> None:
    # a store per caller: separate connections, as separate replicas would have
    stores = [RedisCapStore.from_url(redis_url, redis_project, timeout_s=2.0) for _ in range(3)]
    try:
        class Spread:
            def reserve(self, member: int, rs: Any, now: dt.datetime) -> list[CapOutcome]:
                return stores[now.microsecond // 1000 % 3].reserve(member, rs, now)

        for member in (11, 12):
            got = _race(Spread(), 24, member)
            assert sum(o.granted for o in got) == 3
            assert all(not o.dropped for o in got)  # item 1: 3 suggestions, under its 5
            client = stores[0].client
            key = f"{key_prefix(redis_project)}{{{member}}}:three_an_hour"
            assert client.zcard(key) == 3
            assert client.zcard(f"{key_prefix(redis_project)}{{{member}}}:item_five:1") == 3
            assert 0 < client.pttl(key) <= 3_600_000  # gone an hour after the last write
    finally:
        assert stores[0].delete_all() > 0
        for s in stores:
            s.close()


def test_parallel_threads_on_sqlite_never_exceed_a_cap(tmp_path: Path) -> None:
    store = SqliteCapStore(tmp_path / "caps.sqlite", timeout_s=10.0)
    try:
        got = _race(store, 16, 21)
        assert sum(o.granted for o in got) == 3
    finally:
        store.close()


def _sqlite_worker(path: str, start_at: float, calls: int) -> list[bool]:
    store = SqliteCapStore(Path(path), timeout_s=30.0)
    time.sleep(max(start_at - time.time(), 0))
    out = []
    for k in range(calls):
        got = store.reserve(31, [burst(1)], T0 + (os.getpid() % 1000 * 10 + k) * MS)
        out.append(got[0].granted)
    store.close()
    return out


@pytest.mark.slow
def test_worker_processes_sharing_the_sqlite_file_never_exceed_a_cap(tmp_path: Path) -> None:
    path = tmp_path / "caps.sqlite"
    SqliteCapStore(path).close()  # the schema, once
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        start_at = time.time() + 3.0  # all of them import and open first, then go at once
        results = pool.starmap(_sqlite_worker, [(str(path), start_at, 6)] * 4)
    assert sum(sum(r) for r in results) == 3
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM cap_events WHERE key = "
                            "'31:three_an_hour'").fetchone() == (3,)


# --------------------------------------------------------------------------------------------
# Nothing grows forever.
# --------------------------------------------------------------------------------------------
def _keys(store: SqliteCapStore) -> list[str]:
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        return sorted(k for (k,) in conn.execute("SELECT key FROM cap_events"))


def test_sqlite_rows_are_pruned_once_out_of_their_window(tmp_path: Path) -> None:
    store = SqliteCapStore(tmp_path / "caps.sqlite")
    store.reserve(41, [urgent(1, 2), expiry(3)], T0)
    assert _keys(store) == ["41:expiry_weekly", "41:same_item_daily:1", "41:same_item_daily:2",
                            "41:same_item_daily:3", "41:urgent_daily"]
    # another member's call prunes only its own keys: its cost does not grow with the table
    store.reserve(42, [expiry()], T0 + 24 * HOUR)
    assert _keys(store) == ["41:expiry_weekly", "41:same_item_daily:1", "41:same_item_daily:2",
                            "41:same_item_daily:3", "41:urgent_daily", "42:expiry_weekly"]
    # the member's own next call prunes the keys it counts (and no other of its own)
    assert store.reserve(41, [urgent(1)], T0 + 24 * HOUR, dry_run=True) == [CapOutcome(True)]
    assert _keys(store) == ["41:expiry_weekly", "41:same_item_daily:2", "41:same_item_daily:3",
                            "42:expiry_weekly"]
    store.close()


def test_sqlite_sweeps_the_rows_of_members_never_seen_again_a_bounded_batch_at_a_time(
        tmp_path: Path) -> None:
    store = SqliteCapStore(tmp_path / "caps.sqlite", sweep_interval_s=3600.0, sweep_rows=2)
    store.reserve(43, [urgent(1, 2, 3)], T0)  # the first call sweeps (nothing yet)
    assert len(_keys(store)) == 4
    store.reserve(44, [expiry()], T0 + 24 * HOUR)
    assert len(_keys(store)) == 5  # no sweep within the interval: 43's rows stay
    store._next_sweep = 0.0  # the interval has passed
    store.reserve(44, [expiry()], T0 + 24 * HOUR)
    assert len(_keys(store)) == 3  # two of 43's four expired rows swept, no more
    # the sweep hit its bound, so the backlog goes on the next calls, a batch each
    store.reserve(44, [expiry()], T0 + 24 * HOUR)
    assert _keys(store) == ["44:expiry_weekly"]
    store.reserve(45, [urgent(1)], T0 + 48 * HOUR)  # within the interval again: no sweep
    assert _keys(store) == ["44:expiry_weekly", "45:same_item_daily:1", "45:urgent_daily"]
    store.close()


def test_sqlite_reserve_async_waits_for_the_lock_off_the_event_loop(tmp_path: Path) -> None:
    store = SqliteCapStore(tmp_path / "caps.sqlite", timeout_s=5.0)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:  # another process holding the write lock a while
        with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as c:
            c.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            c.execute("ROLLBACK")

    async def main() -> tuple[list[CapOutcome], float, int]:
        loop = asyncio.get_running_loop()
        call = asyncio.ensure_future(store.reserve_async(91, [expiry(1)], T0))
        ticks, gap, last = 0, 0.0, loop.time()
        while not call.done():  # the loop keeps turning while the call waits
            await asyncio.sleep(0.005)
            gap, last, ticks = max(gap, loop.time() - last), loop.time(), ticks + 1
            if ticks == 40:
                release.set()
        return await call, gap, ticks

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        got, gap, ticks = asyncio.run(main())
    finally:
        release.set()
        holder.join()
    assert got == [CapOutcome(True)]
    assert ticks >= 40 and gap < 0.1  # ~0.2 s waiting on the lock, the loop never held
    store.close()


def test_sqlite_reserve_async_refuses_a_call_that_waited_past_its_timeout(
        tmp_path: Path) -> None:
    store = SqliteCapStore(tmp_path / "caps.sqlite", timeout_s=0.2)
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    async def main() -> list[BaseException | list[CapOutcome]]:
        return await asyncio.gather(*(store.reserve_async(92 + k, [expiry(1)], T0)
                                      for k in range(3)), return_exceptions=True)

    try:
        start = time.monotonic()
        got = asyncio.run(main())
        took = time.monotonic() - start
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # the first waits its 0.2 s on the lock; the two queued behind it are past theirs by then
    assert all(isinstance(g, CapStoreUnavailable) for g in got)
    assert "behind earlier calls" in str(got[2])
    assert took < 0.6  # not 3 x 0.2 s one after the other
    assert asyncio.run(store.reserve_async(92, [expiry(1)], T0)) == [CapOutcome(True)]
    store.close()


def test_redis_keys_carry_the_member_hash_tag_and_a_ttl(redis_url: str,
                                                        redis_project: str) -> None:
    store = RedisCapStore.from_url(redis_url, redis_project)
    try:
        store.reserve(51, [urgent(1)], T0)
        prefix = f"recsvc:{redis_project}:caps:"
        keys = sorted(k.decode() for k in store.client.scan_iter(match=prefix + "*"))
        assert keys == [prefix + "{51}:same_item_daily:1", prefix + "{51}:urgent_daily"]
        for key in keys:
            assert 0 < store.client.pttl(key) <= 24 * 3_600_000
        assert store.delete_all() == 2
    finally:
        store.close()


# --------------------------------------------------------------------------------------------
# A store that does not answer.
# --------------------------------------------------------------------------------------------
def test_a_hung_or_dead_redis_is_cap_store_unavailable(
        private_redis: tuple[str, subprocess.Popen]) -> None:
    url, proc = private_redis
    store = RedisCapStore.from_url(url, "recsvc_test_dead")
    assert store.reserve(61, [expiry(1)], T0) == [CapOutcome(True)]
    os.kill(proc.pid, signal.SIGSTOP)  # hung: the connection open, nothing answers
    try:
        start = time.monotonic()
        with pytest.raises(CapStoreUnavailable, match="Redis cap store"):
            store.reserve(61, [expiry(1)], T0 + HOUR)
        assert time.monotonic() - start < 1.0  # the 50 ms timeout, no retries
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert store.reserve(61, [expiry(1)], T0 + HOUR) == [CapOutcome(False, "expiry_weekly")]
    proc.kill()
    proc.wait(timeout=10)
    with pytest.raises(CapStoreUnavailable):
        store.reserve(61, [expiry(1)], T0 + 8 * 24 * HOUR)
    store.close()


def test_a_locked_sqlite_file_is_cap_store_unavailable(tmp_path: Path) -> None:
    store = SqliteCapStore(tmp_path / "caps.sqlite", timeout_s=0.05)
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock for too long
    try:
        with pytest.raises(CapStoreUnavailable, match="SQLite cap store"):
            store.reserve(71, [expiry(1)], T0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.reserve(71, [expiry(1)], T0) == [CapOutcome(True)]
    store.close()


def test_settings_choose_the_store(tmp_path: Path, redis_url: str) -> None:
    local = open_cap_store(Settings(data_dir=tmp_path))
    assert isinstance(local, SqliteCapStore)
    assert local.path == tmp_path / "caps" / "nudge_caps.sqlite" and local.path.exists()
    local.close()
    project = f"recsvc_test_{uuid.uuid4().hex[:10]}"
    remote = open_cap_store(Settings(data_dir=tmp_path, redis_url=redis_url,
                                     feast_project=project))
    try:
        assert isinstance(remote, RedisCapStore) and remote.prefix == key_prefix(project)
        assert remote.reserve(81, [expiry()], T0) == [CapOutcome(True)]
    finally:
        remote.delete_all()
        remote.close()
