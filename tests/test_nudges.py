"""GetNudges on the real grpc.aio server, the dataplane under concurrent replicas, and the
`recsvc nudges` batch job, on the tiny tables (numbers worked out from tests/conftest.py)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import shutil
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from conftest import bad_request_field
from recsvc import cli
from recsvc.adapters import feast as fstore
from recsvc.adapters.caps_redis import RedisCapStore
from recsvc.adapters.caps_sqlite import SqliteCapStore
from recsvc.adapters.model_holder import ModelHolder
from recsvc.adapters.online import OnlineReader
from recsvc.adapters.registry import Registry
from recsvc.app.answers import NudgeRequest
from recsvc.app.catalogue import Catalogue
from recsvc.app.dataplane import Dataplane
from recsvc.app.ports import CapStore
from recsvc.config import Programme, load_programme, parse_programme
from recsvc.errors import CapStoreUnavailable
from recsvc.jobs.features import run_features
from recsvc.metrics import ServiceMetrics
from recsvc.ml.scoring import ChurnScorer
from recsvc.settings import Settings
from recsvc.transport.server import create_server, mark_serving
from recsvc.transport.servicer import RedemptionServicer
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc

P = load_programme()
REPO = Path(__file__).resolve().parent.parent / "feature_repo"
# The tiny member 1 holds 100 points lapsing 2026-02-01, 200 lapsing 2026-03-01 and 50 lapsing
# 2026-04-01 (350 in all); member 3 holds 6,000 lapsing 2026-02-01 and 12 lapsing 2026-04-01;
# member 2 has none. Items: 10 (800 points, 80.00) and 11 (500 points, 30.00).
JAN_30 = dt.datetime(2026, 1, 30, tzinfo=dt.UTC)
DAY = 86_400.0


@pytest.fixture(scope="module")
def tiny(tiny_tables_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny tables with their features in a Feast SQLite store (no model trained)."""
    data = tmp_path_factory.mktemp("nudges") / "data"
    shutil.copytree(tiny_tables_dir, data)
    settings = Settings(data_dir=data, feature_repo=REPO,
                        feast_project=f"recsvc_test_{uuid.uuid4().hex[:10]}")
    run_features(settings, P, say=lambda _: None)
    return settings


@pytest.fixture(scope="module")
def online(tiny: Settings) -> Iterator[Any]:
    reader = OnlineReader.from_store(fstore.open_store(tiny))
    yield reader
    reader.close()


class Clock:
    """The dataplane's clock, moved by the test."""

    def __init__(self, when: dt.datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def plane(tiny: Settings, online: Any, caps: CapStore | None, clock: Clock,
          programme: Programme = P) -> tuple[Dataplane, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    churn = ModelHolder("churn", Registry(tiny.registry_dir), ChurnScorer, metrics)
    catalogue = Catalogue(online, lambda: [10, 11])
    catalogue.refresh()
    return Dataplane(online, churn, metrics, programme=programme, catalogue=catalogue,
                     caps=caps, clock=clock), registry


def serve(dataplane: Dataplane, registry: CollectorRegistry,
          check: Callable[[Any, CollectorRegistry], Awaitable[None]]) -> None:
    async def main() -> None:
        servicer = RedemptionServicer(dataplane, dataplane.metrics)
        server, port, health = await create_server("127.0.0.1:0", servicer)
        await mark_serving(health)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await check(recsvc_pb2_grpc.RedemptionServiceStub(channel), registry)
        finally:
            await server.stop(grace=None)

    asyncio.run(main())


def _options(nudge: Any) -> list[tuple[int, int, int]]:
    """(item, points, cash) of each option's first (most points) way to pay."""
    return [(o.item_id, o.points_cash[0].points, o.points_cash[0].cash_minor)
            for o in nudge.options]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _total(registry: CollectorRegistry, name: str) -> float:
    """A counter summed over all its series."""
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def test_get_nudges_answers_and_caps_withhold_the_second_reminder(
        tiny: Settings, online: Any, tmp_path: Path) -> None:
    clock = Clock(JAN_30)
    dataplane, registry = plane(tiny, online, SqliteCapStore(tmp_path / "caps.sqlite"), clock)

    async def check(stub: Any, registry: CollectorRegistry) -> None:
        ask = pb.GetNudgesRequest(member_id=1, channel=pb.CHANNEL_PUSH)
        got = await stub.GetNudges(ask)
        # no model in the tiny programme: ranked by the index, and said so
        assert got.degraded and list(got.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL]
        assert got.experiment_arm and got.model_version == "" and not got.capped
        assert not got.HasField("verification")  # set only for a flagged member
        urgent, soon = got.nudges
        # 100 points lapse in 2 days: urgent; the 200 lapsing in exactly 30 days: a reminder
        assert (urgent.kind, urgent.points) == (pb.NUDGE_KIND_EXPIRY_URGENT, 100)
        assert urgent.expires_at.ToDatetime(dt.UTC) == dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
        assert urgent.message == "100 points expire in 2 days: use them before they lapse."
        assert (soon.kind, soon.points) == (pb.NUDGE_KIND_EXPIRY, 200)
        assert soon.expires_at.ToDatetime(dt.UTC) == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
        # exactly those points as points + cash: 11 for 100 + 30.00 x 400/500 = 24.00, and
        # 10 for 100 + 80.00 x 700/800 = 70.00 (11 first: its index is the higher at 100)
        assert _options(urgent) == [(11, 100, 2_400), (10, 100, 7_000)]
        assert _options(soon) == [(11, 200, 1_800), (10, 200, 6_000)]
        assert all(pb.REASON_CODE_USES_EXPIRING_POINTS in o.reasons for o in urgent.options)
        assert all(o.expiring_points_used == 100 for o in urgent.options)
        # asked again within the windows, on the same channel: both withheld by their caps
        again = await stub.GetNudges(ask)
        assert not again.nudges
        assert [(c.kind, c.cap) for c in again.capped] == [
            (pb.NUDGE_KIND_EXPIRY_URGENT, "urgent_daily"), (pb.NUDGE_KIND_EXPIRY, "expiry_weekly")]
        assert _sample(registry, "recsvc_nudges_capped_total", kind="expiry",
                       cap="expiry_weekly") == 1
        assert _sample(registry, "recsvc_nudges_capped_total", kind="expiry_urgent",
                       cap="urgent_daily") == 1
        assert _sample(registry, "recsvc_nudges_total", kind="expiry", channel="push",
                       arm=got.experiment_arm) == 1
        # a day later the urgent window has passed; the weekly reminder still waits
        clock.now += DAY
        day_two = await stub.GetNudges(ask)
        assert [n.kind for n in day_two.nudges] == [pb.NUDGE_KIND_EXPIRY_URGENT]
        assert day_two.nudges[0].message == "100 points expire in 1 day: use them before they " \
                                            "lapse."
        assert [c.cap for c in day_two.capped] == ["expiry_weekly"]
        # every series is there from the start, at 0
        assert registry.get_sample_value("recsvc_nudges_total", {
            "kind": "unlock_close", "channel": "sms", "arm": got.experiment_arm}) == 0
        assert registry.get_sample_value("recsvc_nudges_capped_total", {
            "kind": "low_balance", "cap": "low_balance_weekly"}) == 0
        assert registry.get_sample_value("recsvc_degraded_answers_total", {
            "rpc": "GetNudges", "reason": "cap_store_unavailable"}) == 0

    serve(dataplane, registry, check)


def test_a_dry_run_counts_nothing(tiny: Settings, online: Any, tmp_path: Path) -> None:
    dataplane, registry = plane(tiny, online, SqliteCapStore(tmp_path / "caps.sqlite"),
                                Clock(JAN_30))

    async def check(stub: Any, registry: CollectorRegistry) -> None:
        preview = pb.GetNudgesRequest(member_id=3, dry_run=True)
        for _ in range(2):
            got = await stub.GetNudges(preview)
            # 6,000 points lapse in 2 days; they buy both items outright (10 first)
            assert [(n.kind, n.points) for n in got.nudges] == [
                (pb.NUDGE_KIND_EXPIRY_URGENT, 6_000)]
            assert _options(got.nudges[0]) == [(10, 800, 0), (11, 500, 0)]
        assert _total(registry, "recsvc_nudges_total") == 0
        assert _total(registry, "recsvc_nudges_capped_total") == 0
        real = await stub.GetNudges(pb.GetNudgesRequest(member_id=3))
        assert len(real.nudges) == 1  # the previews recorded nothing
        assert _total(registry, "recsvc_nudges_total") == 1
        after = await stub.GetNudges(preview)
        assert not after.nudges and [c.cap for c in after.capped] == ["urgent_daily"]
        assert _total(registry, "recsvc_nudges_capped_total") == 0  # a preview withholds none

    serve(dataplane, registry, check)


def test_low_balance_and_unlock_close_from_the_callers_balance(tiny: Settings, online: Any,
                                                               tmp_path: Path) -> None:
    dataplane, registry = plane(tiny, online, SqliteCapStore(tmp_path / "caps.sqlite"),
                                Clock(JAN_30))

    async def check(stub: Any, registry: CollectorRegistry) -> None:
        low = await stub.GetNudges(pb.GetNudgesRequest(
            member_id=2, context=pb.RequestContext(points_balance=80)))
        assert [(n.kind, n.points, len(n.options)) for n in low.nudges] == [
            (pb.NUDGE_KIND_LOW_BALANCE, 80, 0)]  # nothing costs 80 points or less
        near = await stub.GetNudges(pb.GetNudgesRequest(
            member_id=2, context=pb.RequestContext(points_balance=1_700)))
        (unlock,) = near.nudges
        assert (unlock.kind, unlock.points) == (pb.NUDGE_KIND_UNLOCK_CLOSE, 300)
        u = unlock.unlock
        assert (u.category, u.unlock_points, u.points_gap, u.spend_to_unlock_minor) == (
            "kitchenware", 2_000, 300, 30_000)
        assert unlock.message == "300 more points unlock kitchenware: spend 300.00 to get there."
        nothing = await stub.GetNudges(pb.GetNudgesRequest(member_id=2))  # no points at all
        assert not nothing.nudges and not nothing.capped

    serve(dataplane, registry, check)


def test_bad_input_is_invalid_argument_naming_the_field(tiny: Settings, online: Any,
                                                        tmp_path: Path) -> None:
    dataplane, registry = plane(tiny, online, SqliteCapStore(tmp_path / "caps.sqlite"),
                                Clock(JAN_30))

    async def check(stub: Any, _: CollectorRegistry) -> None:
        for request, field in (
            (pb.GetNudgesRequest(member_id=1, channel=9), "channel"),  # type: ignore[arg-type]
            (pb.GetNudgesRequest(member_id=-1), "member_id"),
            (pb.GetNudgesRequest(member_id=1, context=pb.RequestContext(experiment_arm="no")),
             "context.experiment_arm"),
            (pb.GetNudgesRequest(member_id=1, context=pb.RequestContext(points_balance=-5)),
             "context.points_balance"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetNudges(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert bad_request_field(err.value) == field

    serve(dataplane, registry, check)


def test_items_over_their_cap_are_dropped_from_a_nudge(tiny: Settings, online: Any,
                                                       tmp_path: Path) -> None:
    once = parse_programme({"nudges": {"caps": [
        {"name": "item_once", "kind": "item", "max": 1, "window_hours": 24}]}})
    dataplane, registry = plane(tiny, online, SqliteCapStore(tmp_path / "caps.sqlite"),
                                Clock(JAN_30), once)
    got = dataplane.nudges(NudgeRequest(1), "GetNudges")
    urgent, soon = got.nudges
    # the urgent nudge suggests 11 and 10 first; the reminder after it may not repeat them
    assert [o.item_id for o in urgent.options] == [11, 10] and soon.options == ()
    assert soon.points == 200 and not got.capped  # the nudge stays, only its items go
    assert _sample(registry, "recsvc_nudge_options_capped_total", kind="expiry",
                   cap="item_once") == 2


class HeldCapsLock:
    """Another worker process holding the caps file's write lock until `release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.locked, self.release = threading.Event(), threading.Event()

    def _hold(self) -> None:
        holder = sqlite3.connect(self.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        self.locked.set()
        self.release.wait(10)
        holder.execute("ROLLBACK")
        holder.close()

    async def take(self) -> None:
        threading.Thread(target=self._hold).start()
        assert await asyncio.to_thread(self.locked.wait, 10)


def serve_with_held_caps(tiny: Settings, online: Any, tmp_path: Path,
                         check: Callable[[Any, CollectorRegistry, HeldCapsLock],
                                         Awaitable[None]]) -> None:
    store = SqliteCapStore(tmp_path / "caps.sqlite", timeout_s=5.0)
    dataplane, registry = plane(tiny, online, store, Clock(JAN_30))
    held = HeldCapsLock(store.path)
    try:
        serve(dataplane, registry, lambda stub, reg: check(stub, reg, held))
    finally:
        held.release.set()
        store.close()


def test_get_nudges_waits_on_a_locked_sqlite_cap_store_off_the_event_loop(
        tiny: Settings, online: Any, tmp_path: Path) -> None:
    # another worker process holds the lock for 0.3 s: the call waits for it (within its
    # timeout) while the server's event loop keeps serving
    async def check(stub: Any, registry: CollectorRegistry, held: HeldCapsLock) -> None:
        loop = asyncio.get_running_loop()
        await held.take()
        loop.call_later(0.3, held.release.set)
        call = asyncio.ensure_future(stub.GetNudges(pb.GetNudgesRequest(member_id=1)))
        gap, last, start = 0.0, loop.time(), loop.time()
        while not call.done():
            await asyncio.sleep(0.005)
            gap, last = max(gap, loop.time() - last), loop.time()
        got = await call
        assert loop.time() - start >= 0.25  # it did wait on the lock ...
        assert gap < 0.1  # ... and the loop kept turning meanwhile (not ~0.3 s held)
        assert [n.kind for n in got.nudges] == [pb.NUDGE_KIND_EXPIRY_URGENT,
                                                pb.NUDGE_KIND_EXPIRY]
        assert list(got.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL]

    serve_with_held_caps(tiny, online, tmp_path, check)


def test_a_call_whose_caller_leaves_while_it_waits_on_the_caps_is_counted_cancelled(
        tiny: Settings, online: Any, tmp_path: Path) -> None:
    async def check(stub: Any, registry: CollectorRegistry, held: HeldCapsLock) -> None:
        await held.take()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetNudges(pb.GetNudgesRequest(member_id=1), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        cancelled = {"rpc": "GetNudges", "code": "CANCELLED"}
        for _ in range(100):  # the server side sees the cancellation a moment later
            if registry.get_sample_value("recsvc_requests_total", cancelled):
                break
            await asyncio.sleep(0.02)
        assert registry.get_sample_value("recsvc_requests_total", cancelled) == 1
        assert registry.get_sample_value("recsvc_requests_total",
                                         {"rpc": "GetNudges", "code": "OK"}) == 0

    serve_with_held_caps(tiny, online, tmp_path, check)


class DownCaps:
    """A cap store that does not answer (an adapter swapped in, no patching)."""

    def __init__(self) -> None:
        self.asked = 0

    def reserve(self, member_id: int, reservations: Sequence[Any], now: dt.datetime, *,
                dry_run: bool = False) -> list[Any]:
        self.asked += 1
        raise CapStoreUnavailable("Redis cap store: Timeout reading from socket")

    async def reserve_async(self, member_id: int, reservations: Sequence[Any],
                            now: dt.datetime, *, dry_run: bool = False) -> list[Any]:
        return self.reserve(member_id, reservations, now, dry_run=dry_run)

    def close(self) -> None:
        pass


def test_a_cap_store_down_withholds_the_nudges_and_degrades(
        tiny: Settings, online: Any, private_redis: tuple[str, subprocess.Popen]) -> None:
    url, redis_proc = private_redis
    dead = RedisCapStore.from_url(url, "recsvc_test_dead")
    redis_proc.kill()
    redis_proc.wait(timeout=10)
    for caps in (DownCaps(), dead, None):
        dataplane, registry = plane(tiny, online, caps, Clock(JAN_30))

        async def check(stub: Any, registry: CollectorRegistry) -> None:
            got = await stub.GetNudges(pb.GetNudgesRequest(member_id=1))
            assert not got.nudges and not got.capped  # never a cap exceeded, never an error
            assert list(got.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL,
                                                  pb.DEGRADED_REASON_CAP_STORE_UNAVAILABLE]
            assert _sample(registry, "recsvc_degraded_answers_total", rpc="GetNudges",
                           reason="cap_store_unavailable") == 1
            # with nothing due, the store is not asked: not degraded by it
            none = await stub.GetNudges(pb.GetNudgesRequest(member_id=2))
            assert list(none.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL]

        serve(dataplane, registry, check)
    dead.close()


def test_a_cap_store_that_failed_is_paused_not_asked_by_every_call(
        tiny: Settings, online: Any) -> None:
    """After one failure the cap store is paused (its breaker): the next calls withhold
    their nudges at once, degraded, without waiting on it; then one call probes it again."""
    from recsvc.app.breaker import Breaker

    caps = DownCaps()
    dataplane, registry = plane(tiny, online, caps, Clock(JAN_30))
    clock = Clock(JAN_30)
    dataplane.nudge_answers.breaker = Breaker("caps", cooldown_s=60, clock=clock)

    async def check(stub: Any, registry: CollectorRegistry) -> None:
        for _ in range(5):
            got = await stub.GetNudges(pb.GetNudgesRequest(member_id=1))
            assert not got.nudges and pb.DEGRADED_REASON_CAP_STORE_UNAVAILABLE in \
                got.degraded_reasons
        assert caps.asked == 1 and dataplane.nudge_answers.breaker.trips == 1
        clock.now += 61  # the pause is over: one call probes (and fails: paused again)
        await stub.GetNudges(pb.GetNudgesRequest(member_id=1))
        await stub.GetNudges(pb.GetNudgesRequest(member_id=1))
        assert caps.asked == 2

    serve(dataplane, registry, check)


@pytest.mark.redis
def test_replicas_asking_for_the_same_member_at_once_never_exceed_a_cap(
        tiny: Settings, online: Any, redis_url: str, redis_project: str) -> None:
    clock = Clock(JAN_30)
    stores = [RedisCapStore.from_url(redis_url, redis_project, timeout_s=2.0) for _ in range(3)]
    planes = [plane(tiny, online, s, clock) for s in stores]
    start = threading.Barrier(12)
    answers: list[Any] = []
    lock = threading.Lock()

    def call(k: int) -> None:
        dataplane, _ = planes[k % 3]
        start.wait()
        got = dataplane.nudges(NudgeRequest(3, channel="push"), "GetNudges")
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(12)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(answers) == 12
        assert all(a.degraded == ("no_model",) for a in answers)  # the cap store answered
        # one of twelve, whichever replica won
        assert [n.kind for a in answers for n in a.nudges] == ["expiry_urgent"]
        delivered = sum(_sample(r, "recsvc_nudges_total", kind="expiry_urgent", channel="push",
                                arm=a.name) for _, r in planes for a in P.experiments.arms)
        capped = sum(_sample(r, "recsvc_nudges_capped_total", kind="expiry_urgent",
                             cap="urgent_daily") for _, r in planes)
        assert (delivered, capped) == (1, 11)
    finally:
        stores[0].delete_all()
        for s in stores:
            s.close()


def test_options_are_ranked_with_the_propensity_model_as_recommendations_are(
        trained: Any, tmp_path: Path) -> None:
    from recsvc.ml.scoring import PropensityScorer
    from recsvc.offline.batch_scoring import features_as_of

    now = features_as_of(trained.settings.data_dir)
    metrics = ServiceMetrics(CollectorRegistry())
    propensity = ModelHolder("propensity", trained.registry,
                             lambda loaded: PropensityScorer(loaded, trained.programme),
                             metrics, trained.known_features)
    propensity.refresh()
    reader = OnlineReader.from_store(trained.store)
    catalogue = Catalogue(reader, lambda: _item_ids(trained))
    catalogue.refresh()
    dataplane = Dataplane(reader, ModelHolder("churn", trained.registry, ChurnScorer, metrics),
                          metrics, programme=trained.programme, propensity=propensity,
                          catalogue=catalogue, caps=SqliteCapStore(tmp_path / "caps.sqlite"),
                          clock=now.timestamp)
    # the member with the most points lapsing within the reminder window (enough to buy
    # something with, so the nudge has options to rank)
    ids = _member_ids(trained)[:400]
    read = reader.read_service("redemption_v1", "member_id", ids)
    until = (now + dt.timedelta(days=30)).timestamp()
    lapsing = [sum(p for t, p in zip(at or [], pts or [], strict=True)
                   if now.timestamp() < t <= until)
               for at, pts in zip(read["member_expiry__expiry_at_s"],
                                  read["member_expiry__expiry_points"], strict=True)]
    member = ids[int(np.argmax(lapsing))]
    assert max(lapsing) > 0
    got = dataplane.nudges(NudgeRequest(member, dry_run=True), "GetNudges")
    assert got.degraded == () and got.model_version == trained.registry.production("propensity")
    weight = {a.name: a.propensity_weight for a in trained.programme.experiments.arms}[got.arm]
    expiring = [n for n in got.nudges if n.kind in ("expiry", "expiry_urgent")]
    assert expiring and any(n.options for n in expiring)
    for n in expiring:
        assert len(n.options) <= trained.programme.nudges.options
        for o in n.options:
            assert o.propensity is not None and 0.0 < o.propensity < 1.0
            assert o.score == pytest.approx(
                o.factors.recommendation_index * o.propensity ** weight, rel=1e-12)
            assert 0 < o.points_cash[0].points <= n.points  # paid with those points
        assert [o.score for o in n.options] == sorted((o.score for o in n.options),
                                                      reverse=True)
    reader.close()


def _member_ids(ctx: Any) -> list[int]:
    from recsvc.data import schema

    return [int(m) for m in schema.read_table(ctx.settings.data_dir, "members",
                                              ["member_id"])["member_id"].to_numpy()]


def _item_ids(ctx: Any) -> list[int]:
    from recsvc.data import schema

    return [int(i) for i in schema.read_table(ctx.settings.data_dir, "items",
                                              ["item_id"])["item_id"].to_numpy()]


# --------------------------------------------------------------------------------------------
# The batch job.
# --------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_batch_job_writes_every_due_nudge_as_of_a_date_within_the_caps(
        tiny: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in (("DATA_DIR", tiny.data_dir), ("FEATURE_REPO", REPO),
                        ("FEAST_PROJECT", tiny.feast_project)):
        monkeypatch.setenv(f"RECSVC_{name}", str(value))
    out = tmp_path / "nudges.csv"

    def run(day: str, *extra: str) -> list[dict[str, str]]:
        assert cli.main(["nudges", "--as-of", day, "--out", str(out), *extra]) == 0
        return _rows(out)

    # at the end of 2025-02-20 member 1 holds 30 points of the lot lapsing 2025-03-15 (the
    # 350-point redemption took the rest), 22 days away; member 3 is 1,000 short of nothing
    # (6,000: kitchenware and furniture open) and member 2 has no points
    expiry = {"member_id": "1", "kind": "expiry", "points": "30",
              "expires_at": "2025-03-15T00:00:00+00:00", "option_item_ids": "",
              "unlock_category": "", "spend_to_unlock_minor": "",
              "message": "30 points expire by 2025-03-15: use them before they lapse."}
    assert run("2025-02-20", "--dry-run") == [expiry]
    assert run("2025-02-20") == [expiry]  # the preview counted nothing
    said = capsys.readouterr().out
    assert "3 members as of 2025-02-21 00:00 UTC on push" in said
    assert "ranked by the index alone" in said and "members/s" in said
    # the same week again: withheld by the weekly cap, counted as withheld
    assert run("2025-02-22") == []
    assert "withheld by caps: expiry by expiry_weekly 1" in capsys.readouterr().out
    # at the end of 2025-03-12 the 30 points lapse in 2 days: the urgent reminder has its own
    # cap, so the weekly one does not hold it back
    urgent = {**expiry, "kind": "expiry_urgent",
              "message": "30 points expire in 2 days: use them before they lapse."}
    # without --out: a file of that day under the data directory, never the working directory
    assert cli.main(["nudges", "--as-of", "2025-03-12", "--dry-run"]) == 0
    default = tiny.data_dir / "nudges" / "nudges-2025-03-12.csv"
    assert _rows(default) == [urgent] and f"to {default}" in capsys.readouterr().out
    assert run("2025-03-12") == [urgent]
    assert (tiny.data_dir / "metrics" / "recsvc_nudges.prom").exists()
    # after the end of the features: refused, not answered from stale points
    assert cli.main(["nudges", "--as-of", "2025-04-30", "--out", str(out)]) == 2
    assert "run `recsvc features` first" in capsys.readouterr().err
