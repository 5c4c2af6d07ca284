"""The online reader returns exactly what Feast's get_online_features returns, and fails fast."""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import on_cluster
from recsvc.adapters import feast as store
from recsvc.adapters import feast_codec, online, online_redis, online_sqlite, online_write
from recsvc.adapters.online import OnlineReader
from recsvc.adapters.row_cache import HeldColumns
from recsvc.config import load_programme
from recsvc.data import schema
from recsvc.errors import ConfigError, DataMissing, FeatureStoreUnavailable, InvalidArgument
from recsvc.jobs.features import run_features
from recsvc.settings import Settings

P = load_programme()
REPO = Path(__file__).resolve().parent.parent / "feature_repo"
MEMBER_VIEWS = ["member_activity", "member_points"]
ITEM_VIEWS = ["item_catalogue", "item_stats"]
# never ids of the simulation (members and items count up from small numbers)
UNKNOWN = [-7, 10**9, 2**63 - 1, -(2**63)]
# ids the write tests use, apart from everything above
WRITTEN_MEMBER, OLD_MEMBER = 777_000_001, 777_000_002


def _settings(data_dir: Path, project: str, redis_url: str | None = None) -> Settings:
    return Settings(data_dir=data_dir, feature_repo=REPO, feast_project=project,
                    redis_url=redis_url)


def _quiet(_: str) -> None:
    pass


def _typed(columns: dict[str, list[Any]]) -> dict[str, list[str]]:
    """Values by repr: 1, 1.0 and True are equal in Python, but not the same feature value."""
    return {k: [repr(v) for v in vs] for k, vs in columns.items()}


# --------------------------------------------------------------------------------------------
# Stores: one simulated data dir, filled into SQLite and into the shared Redis.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("online") / "data"
    project = f"recsvc_test_{uuid.uuid4().hex[:10]}"
    run_features(_settings(data, project), P, members=300, days=120, seed=11, say=_quiet)
    return data, project


@pytest.fixture(scope="module")
def sqlite_store(data_dir: tuple[Path, str]) -> Any:
    return store.open_store(_settings(*data_dir))


@pytest.fixture(scope="module")
def redis_store(data_dir: tuple[Path, str], redis_url: str) -> Iterator[Any]:
    import redis

    data, project = data_dir
    settings = _settings(data, project, redis_url)
    try:
        run_features(settings, P, say=_quiet)  # the same snapshots, into Redis
        yield store.open_store(settings)
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            online_write.delete_project_keys(client, project)
        finally:
            client.close()


@pytest.fixture(scope="module")
def redis_cluster_store(data_dir: tuple[Path, str], redis_cluster_url: str,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The same snapshots materialised into a real Redis Cluster (three masters, a replica
    each), through a feature repository configured as production is (`redis_cluster`)."""
    with on_cluster(*data_dir, redis_cluster_url, tmp_path_factory.mktemp("repo"),
                    P) as settings:
        yield store.open_store(settings)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("redis_cluster", marks=pytest.mark.redis)])
def feast_store(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="module")
def entities(data_dir: tuple[Path, str]) -> tuple[list[int], list[int]]:
    """A sample of members and every item, each followed by ids nobody has."""
    data, _ = data_dir
    members = sorted(schema.read_table(data, "members", ["member_id"])["member_id"].to_pylist())
    items = sorted(schema.read_table(data, "items", ["item_id"])["item_id"].to_pylist())
    return members[::5] + UNKNOWN, items + UNKNOWN


def _sdk_member_and_items(feast_store: Any, member: int, items: list[int]) -> dict[str, list]:
    rows = [{"member_id": member, "item_id": i} for i in items]
    return store.online_features(feast_store, "propensity_v1", rows)


def _reader_member_and_items(reader: OnlineReader, member: int,
                             items: list[int]) -> dict[str, list]:
    """The SDK's propensity_v1 answer, read as the service does: the member once, items apart."""
    n = len(items)
    one = reader.read_service("propensity_v1", "member_id", [member])
    return {"member_id": [member] * n, "item_id": list(items),
            **{k: v * n for k, v in one.items()},
            **reader.read_service("propensity_v1", "item_id", items)}


def _write(feast_store: Any, view_name: str, entity: int, values: dict[str, Any],
           when: dt.datetime) -> None:
    """Write one row through Feast's own online store (what materialisation does)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    view = feast_store.get_feature_view(view_name)
    key = EntityKey(join_keys=[view.entity_columns[0].name],
                    entity_values=[Value(int64_val=entity)])
    field = {int: "int64_val", float: "double_val", str: "string_val"}
    row = (key, {k: Value(**{field[type(v)]: v}) for k, v in values.items()}, when, None)
    feast_store._get_provider().online_write_batch(feast_store.config, view, [row],
                                                   progress=None)


# --------------------------------------------------------------------------------------------
# The same values as the SDK.
# --------------------------------------------------------------------------------------------
def test_members_are_what_the_sdk_returns(feast_store: Any, entities: tuple) -> None:
    members, _ = entities
    reader = OnlineReader.from_store(feast_store)
    sdk = store.online_features(feast_store, "churn_v1", [{"member_id": m} for m in members])
    for _ in range(2):  # the second time from SQLite's row cache
        by_service = reader.read_service("churn_v1", "member_id", members)
        by_views = reader.read(MEMBER_VIEWS, "member_id", members)
        assert _typed({"member_id": members, **by_service}) == _typed(sdk)
        assert _typed({"member_id": members, **by_views}) == _typed(sdk)
    # not vacuous: known members have values of each type, nullable features have nulls,
    # unknown members have none at all
    known = len(members) - len(UNKNOWN)
    assert {type(v) for col in by_views.values() for v in col[:known]} == {int, float, str,
                                                                            type(None)}
    assert all(v is not None for v in by_views["member_points__points_balance"][:known])
    assert all(v is None for col in by_views.values() for v in col[known:])
    assert len(by_views) == 32
    # list-valued features (the expiring lots) too
    sdk = store.online_features(feast_store, "redemption_v1", [{"member_id": m} for m in members])
    got = reader.read_service("redemption_v1", "member_id", members)
    assert _typed({"member_id": members, **got}) == _typed(sdk)
    lots = got["member_expiry__expiry_points"]
    assert any(isinstance(v, list) and v for v in lots[:known])
    reader.close()


def test_items_and_a_member_are_what_the_sdk_returns(feast_store: Any, entities: tuple) -> None:
    members, items = entities
    reader = OnlineReader.from_store(feast_store)
    for member in (members[0], members[3], UNKNOWN[1]):
        sdk = _sdk_member_and_items(feast_store, member, items)
        assert _typed(_reader_member_and_items(reader, member, items)) == _typed(sdk)
    got = reader.read(ITEM_VIEWS, "item_id", items)
    known = len(items) - len(UNKNOWN)
    assert all(v is not None for v in got["item_catalogue__points_price"][:known])
    assert any(v is None for v in got["item_stats__stock_turnover_days"][:known])
    assert all(v is None for col in got.values() for v in col[known:])
    reader.close()


def test_duplicates_order_and_empty_requests(feast_store: Any, entities: tuple) -> None:
    members, items = entities
    reader = OnlineReader.from_store(feast_store)
    ids = [members[2], UNKNOWN[0], members[2], members[1], members[2]]
    sdk = store.online_features(feast_store, "churn_v1", [{"member_id": m} for m in ids])
    assert _typed({"member_id": ids, **reader.read(MEMBER_VIEWS, "member_id", ids)}) == _typed(
        sdk)
    empty = reader.read(ITEM_VIEWS, "item_id", [])
    assert set(empty) == {k for k in _sdk_member_and_items(feast_store, 1, items[:1])
                          if k.startswith("item_")} - {"item_id"}
    assert all(v == [] for v in empty.values())
    reader.close()


def test_writes_are_seen_and_old_rows_are_served_as_the_sdk_serves_them(
        feast_store: Any) -> None:
    """Feast 0.67's get_online_features applies no view ttl online (member views: 28 days):
    a row written in 2001 is returned by the SDK, so the reader returns it too. And a write
    after a read (SQLite: a commit by another connection) is seen by the next read."""
    reader = OnlineReader.from_store(feast_store)
    ids = [WRITTEN_MEMBER, OLD_MEMBER]
    before = reader.read(MEMBER_VIEWS, "member_id", ids)  # fills SQLite's row cache
    now = dt.datetime.now(dt.UTC)
    balance = int(time.time() * 1000)  # differs on every run against a kept Redis
    _write(feast_store, "member_points", WRITTEN_MEMBER,
           {"points_balance": balance, "days_since_last_redemption": 2.5}, now)
    _write(feast_store, "member_activity", OLD_MEMBER, {"tier": "gold", "orders_total": 3},
           dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    sdk = store.online_features(feast_store, "churn_v1", [{"member_id": m} for m in ids])
    after = reader.read(MEMBER_VIEWS, "member_id", ids)
    assert _typed({"member_id": ids, **after}) == _typed(sdk)
    assert after != before
    assert after["member_points__points_balance"][0] == balance
    assert after["member_points__days_since_last_redemption"][0] == 2.5
    assert after["member_points__points_expiring_30d"][0] is None  # never written
    assert (after["member_activity__tier"][1], after["member_activity__orders_total"][1]) == (
        "gold", 3)
    reader.close()


def test_the_generic_redis_pipeline_path_reads_the_same(redis_store: Any,
                                                        entities: tuple) -> None:
    """The path a Redis Cluster takes (redis-py's pipeline, one HMGET per entity)."""
    members, items = entities
    views, services = online.registry_specs(redis_store)
    client = online_redis.redis_client(redis_store.config.online_store, online.REDIS_TIMEOUT_S)
    reader = online_redis.RedisReader(views, services, redis_store.project, client,
                                      use_pipeline=True)
    sdk = _sdk_member_and_items(redis_store, members[1], items)
    assert _typed(_reader_member_and_items(reader, members[1], items)) == _typed(sdk)
    reader.close()


def test_unknown_names_and_wrong_keys(sqlite_store: Any) -> None:
    reader = OnlineReader.from_store(sqlite_store)
    with pytest.raises(DataMissing, match="nope_view"):
        reader.read(["nope_view"], "member_id", [1])
    with pytest.raises(DataMissing, match="nope_v9"):
        reader.read_service("nope_v9", "member_id", [1])
    with pytest.raises(ConfigError, match="keyed by item_id, not member_id"):
        reader.read(["item_catalogue"], "member_id", [1])
    with pytest.raises(ConfigError, match="no feature view keyed by order_id"):
        reader.read_service("churn_v1", "order_id", [1])
    with pytest.raises(InvalidArgument, match="member_id"):
        reader.read(MEMBER_VIEWS, "member_id", [2**63])
    reader.close()


# --------------------------------------------------------------------------------------------
# The fast paths against Feast's own functions.
# --------------------------------------------------------------------------------------------
def _values() -> list[Any]:
    from feast.protos.feast.types.Value_pb2 import Value

    ints = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, -(2**31), 2**62, 2**63 - 1,
            -(2**63), -1, -128]
    out: list[Any] = [Value()]
    out += [Value(int64_val=v) for v in ints]
    out += [Value(int32_val=v) for v in ints if -(2**31) <= v < 2**31]
    out += [Value(double_val=v) for v in (0.0, -0.0, 1.5, -2.25e-300, 1e308, math.inf, math.nan)]
    out += [Value(float_val=v) for v in (0.0, 0.1, -3.5, math.inf)]
    out += [Value(string_val=v) for v in ("", "gold", "é" * 3, "x" * 126, "y" * 127, "z" * 500)]
    out += [Value(bool_val=v) for v in (True, False)]
    out += [Value(bytes_val=b"\x00\xff"), Value(unix_timestamp_val=1_700_000_000)]
    return out


def test_value_decoders_equal_feasts_conversion() -> None:
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type
    from feast.value_type import ValueType

    blobs = [v.SerializeToString() for v in _values()]
    # a value followed by another field: not the canonical shape, so Feast's way decides
    blobs.append(Value(int64_val=5).SerializeToString() + b"\x18\x01")
    for vtype in (ValueType.INT64, ValueType.INT32, ValueType.DOUBLE, ValueType.FLOAT,
                  ValueType.STRING, ValueType.BOOL, ValueType.BYTES, ValueType.UNIX_TIMESTAMP):
        decode = feast_codec.value_decoder(vtype)
        assert decode(None) is None
        for blob in blobs:
            expected = feast_value_type_to_python_type(Value.FromString(blob), vtype)
            assert repr(decode(blob)) == repr(expected), (vtype, blob)


def test_entity_keys_are_feasts_serialisation() -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    ids = [0, 1, 255, 256, -1, 2**40 + 3, *UNKNOWN]
    cases: list[tuple[str, Any, list[Any], str]] = [
        ("member_id", ValueType.INT64, ids, "int64_val"),
        ("code", ValueType.STRING, ["a", "", "é"], "string_val")]
    for name, vtype, values, field in cases:
        codec = feast_codec.EntityKeyCodec(name, vtype, 3)
        protos = [Value(**{field: v}) for v in values]
        expected = [serialize_entity_key(EntityKey(join_keys=[name], entity_values=[p]), 3)
                    for p in protos]
        assert codec.keys(values) == expected


# --------------------------------------------------------------------------------------------
# Faults: a store that does not answer is FeatureStoreUnavailable, quickly.
# --------------------------------------------------------------------------------------------
def _unavailable_within(reader: OnlineReader, seconds: float, match: str,
                        ids: tuple[int, ...] = (1, 2, 3)) -> None:
    start = time.perf_counter()
    with pytest.raises(FeatureStoreUnavailable, match=match):
        reader.read_service("churn_v1", "member_id", list(ids))
    assert time.perf_counter() - start < seconds


def test_a_redis_that_stops_answering_fails_within_the_timeout(
        data_dir: tuple[Path, str], private_redis: tuple[str, subprocess.Popen]) -> None:
    url, proc = private_redis
    settings = _settings(data_dir[0], f"recsvc_test_{uuid.uuid4().hex[:10]}", url)
    run_features(settings, P, say=_quiet)
    reader = OnlineReader.from_store(store.open_store(settings), redis_timeout_s=0.05)
    before = reader.read_service("churn_v1", "member_id", [1, 2, 3])
    assert any(v is not None for v in before["member_points__points_balance"])

    os.kill(proc.pid, signal.SIGSTOP)  # hung: connections open, nothing answers
    try:
        # members read before are held by the client-side cache (a stopped Redis takes no
        # writes, so they are what it holds); others must be asked for, and time out
        assert reader.read_service("churn_v1", "member_id", [1, 2, 3]) == before
        _unavailable_within(reader, 0.5, "Redis.*[Tt]imeout", (4, 5, 6))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    # back by itself: the timed-out connection was dropped, the next read opens a new one
    assert reader.read_service("churn_v1", "member_id", [1, 2, 3]) == before

    proc.kill()  # gone: connections refused
    proc.wait(timeout=10)
    _unavailable_within(reader, 0.5, "Redis")
    reader.close()


def test_a_locked_or_missing_sqlite_file_is_unavailable(data_dir: tuple[Path, str],
                                                       tmp_path: Path) -> None:
    data, project = data_dir
    feast_store = store.open_store(_settings(data, project))
    reader = OnlineReader.from_store(feast_store, sqlite_timeout_s=0.05)
    assert reader.read_service("churn_v1", "member_id", [4])  # connection open, 4 cached
    writer = sqlite3.connect(online_sqlite.sqlite_path(feast_store))
    try:
        writer.execute("BEGIN EXCLUSIVE")  # a writer that holds the file: readers wait
        _unavailable_within(reader, 0.5, "SQLite online store.*locked")
    finally:
        writer.rollback()
        writer.close()
    assert reader.read_service("churn_v1", "member_id", [1, 2, 3])
    reader.close()

    # the registry knows the views, but the online file is gone
    other = _settings(tmp_path / "data", f"recsvc_test_{uuid.uuid4().hex[:10]}")
    empty = store.open_store(other)
    store.apply_definitions(empty, store.load_definitions(other.data_dir, REPO))
    online_sqlite.sqlite_path(empty).unlink()
    reader = OnlineReader.from_store(empty)
    _unavailable_within(reader, 0.5, "SQLite online store")
    reader.close()


@pytest.mark.redis
def test_redis_rows_are_cached_until_redis_announces_a_write(redis_store: Any,
                                                           redis_url: str) -> None:
    """Server-assisted client-side caching: a second read of a member is answered from
    memory; a write by another client (here a raw HSET, not through Feast) or the loss of the
    invalidation subscription is seen by the next read."""
    import redis
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.Value_pb2 import Value
    from prometheus_client import CollectorRegistry

    from recsvc.metrics import ServiceMetrics

    reader = OnlineReader.from_store(redis_store)
    assert isinstance(reader, online_redis.RedisReader)
    ids = [WRITTEN_MEMBER]
    first = reader.read(MEMBER_VIEWS, "member_id", ids)
    hits, misses, held = reader.cache_stats()
    assert (hits, misses) == (0, 1) and held == 1
    assert reader.read(MEMBER_VIEWS, "member_id", ids) == first
    assert reader.cache_stats()[:2] == (1, 1)
    other = redis.Redis.from_url(redis_url)
    try:
        key = reader._views["member_points"].codec.keys(ids)[0] + redis_store.project.encode()
        balance = int(time.time() * 1000) + 7
        other.hset(key, _mmh3("member_points:points_balance"),
                   Value(int64_val=balance).SerializeToString())
        after = reader.read(MEMBER_VIEWS, "member_id", ids)
        assert after["member_points__points_balance"] == [balance]
        assert reader.cache_stats()[:2] == (1, 2)  # the write dropped the row: a miss
        # what the server publishes every few seconds: increments, and the rows held
        registry = CollectorRegistry()
        metrics = ServiceMetrics(registry)
        for _ in range(2):  # published twice: counted once
            metrics.publish_cache(*reader.cache_stats())
        assert [registry.get_sample_value("recsvc_feature_cache_lookups_total",
                                          {"result": r}) for r in ("hit", "miss")] == [1, 2]
        assert registry.get_sample_value("recsvc_feature_cache_rows") == 1
        # the subscription is killed: the cache is emptied and rebuilt, never stale
        assert reader._tracking is not None and reader._tracking.subscriber_id is not None
        other.client_kill_filter(_id=reader._tracking.subscriber_id)
        other.hset(key, _mmh3("member_points:points_balance"),
                   Value(int64_val=balance + 1).SerializeToString())
        got = reader.read(MEMBER_VIEWS, "member_id", ids)
        assert got["member_points__points_balance"] == [balance + 1]
    finally:
        other.close()
        reader.close()


def test_redis_reads_on_the_loop_never_wait_for_tracking_held_by_a_thread(
        redis_store: Any) -> None:
    """While a thread holds the subscription (restarting it against a Redis that answers
    slowly holds it up to its timeouts), what the event loop asks gets None at once, and the
    store read, on a thread, tells; once free, the held rows answer again."""
    import threading

    reader = OnlineReader.from_store(redis_store)
    assert isinstance(reader, online_redis.RedisReader) and reader._tracking is not None
    ids = [WRITTEN_MEMBER]
    read = reader.read_service("churn_v1", "member_id", ids)  # held from now on
    assert reader.read_nowait("churn_v1", "member_id", ids) == read
    got: list[Any] = []
    with reader._tracking._lock:  # as a thread in `_start` holds it
        asker = threading.Thread(target=lambda: got.append(
            reader.read_nowait("churn_v1", "member_id", ids)))
        asker.start()
        asker.join(timeout=10)  # a guard against a hang, not a timing
        assert not asker.is_alive() and got == [None]
    assert reader.read_nowait("churn_v1", "member_id", ids) == read
    reader.close()


def test_sqlite_reads_without_waiting_until_a_writer_holds_the_lock(
        sqlite_store: Any) -> None:
    """What the event loop may ask: rows held while no connection has committed since, the
    file otherwise; None at once when the file must be read while a writer holds its lock
    (rows held stay good then: nothing was committed since)."""
    reader = OnlineReader.from_store(sqlite_store)
    assert isinstance(reader, online_sqlite.SqliteReader)
    ids = [WRITTEN_MEMBER]
    first = reader.read_nowait("churn_v1", "member_id", ids)
    assert first == reader.read_service("churn_v1", "member_id", ids)
    assert reader.read_nowait("churn_v1", "member_id", ids) == first
    hits = reader.cache_stats()[0]
    balance = int(time.time() * 1000) + 11
    _write(sqlite_store, "member_points", WRITTEN_MEMBER, {"points_balance": balance},
           dt.datetime.now(dt.UTC))
    after = reader.read_nowait("churn_v1", "member_id", ids)  # a commit: read again
    assert after is not None and after["member_points__points_balance"] == [balance]
    assert reader.cache_stats()[0] == hits
    writer = sqlite3.connect(online_sqlite.sqlite_path(sqlite_store), isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")  # a materialisation committing
        assert reader.read_nowait("churn_v1", "member_id", [WRITTEN_MEMBER + 1]) is None
        assert reader.read_nowait("churn_v1", "member_id", ids) == after
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert reader.read_nowait("churn_v1", "member_id", ids) == after
    reader.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_any_commit_to_the_sqlite_file_drops_the_held_rows(sqlite_store: Any, tmp_path: Path,
                                                            journal: str) -> None:
    """Held rows are dropped by any connection's commit, whatever it writes: judged by the
    file's change counter in rollback-journal mode, by the probe's data_version in WAL mode
    (where the header's counter is not kept current)."""
    import shutil

    copy = tmp_path / "online.db"
    shutil.copyfile(online_sqlite.sqlite_path(sqlite_store), copy)
    setup = sqlite3.connect(copy)
    assert setup.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
    setup.close()
    base = OnlineReader.from_store(sqlite_store)
    reader = online_sqlite.SqliteReader(base._views, base._services, base.project, copy)
    ids = [WRITTEN_MEMBER]
    first = reader.read_nowait("churn_v1", "member_id", ids)
    assert first is not None
    counted = online_sqlite._ChangeCounter(copy)
    before = counted.read()
    assert (before is None) == (journal == "wal")
    hits = reader.cache_stats()[0]
    assert reader.read_nowait("churn_v1", "member_id", ids) == first
    assert reader.cache_stats()[0] == hits + 1  # held
    writer = sqlite3.connect(copy)
    writer.execute("CREATE TABLE unrelated (x)")  # a commit that changes no feature
    writer.commit()
    writer.close()
    if journal == "delete":
        assert counted.read() == before + 1
    assert reader.read_nowait("churn_v1", "member_id", ids) == first  # read from the file
    assert reader.cache_stats()[0] == hits + 1
    counted.close()
    reader.close()


def test_a_cached_read_is_its_held_rows_until_they_change(sqlite_store: Any) -> None:
    """A read answered from the cache carries the held rows themselves, so the dataplane tells
    an unchanged member by identity (its `snapshot`) without building columns; the columns it
    builds on demand are copies; a commit gives a read with another snapshot."""
    from recsvc.app.profiles import snapshot

    reader = OnlineReader.from_store(sqlite_store)
    ids = [WRITTEN_MEMBER]
    first = reader.read_nowait("churn_v1", "member_id", ids)
    again = reader.read_nowait("churn_v1", "member_id", ids)
    assert isinstance(first, HeldColumns) and isinstance(again, HeldColumns)
    assert again.rows[0] is first.rows[0] and snapshot(again) == snapshot(first)
    assert dict(again) == dict(first) == dict(reader.read_service("churn_v1", "member_id", ids))
    name = "member_points__points_balance"
    first[name].append(-1)  # a caller changing what it got changes nothing held
    assert reader.read_nowait("churn_v1", "member_id", ids)[name] == again[name]
    balance = int(time.time() * 1000) + 13
    _write(sqlite_store, "member_points", WRITTEN_MEMBER, {"points_balance": balance},
           dt.datetime.now(dt.UTC))
    after = reader.read_nowait("churn_v1", "member_id", ids)
    assert after is not None and snapshot(after) != snapshot(again)
    assert after[name] == [balance]
    reader.close()
