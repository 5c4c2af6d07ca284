"""The numpy writer of Redis materialisation (recsvc.adapters.redis_write): the bytes Feast
writes, the rule that an older row never replaces a newer one, and a real Redis Cluster."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recsvc.adapters import feast as store
from recsvc.adapters import materialise, online_write
from recsvc.adapters import redis_write as rw
from recsvc.adapters import resp_columns as rc
from recsvc.adapters.materialise import FILL_MARK_KEY
from recsvc.adapters.online_write import delete_project_keys
from recsvc.config import load_programme
from recsvc.jobs.features import run_features
from recsvc.settings import Settings

P = load_programme()
REPO = Path(__file__).resolve().parent.parent / "feature_repo"

INT64_EDGES = [0, 1, 127, 128, 16383, 16384, -1, -128, 2**31, -(2**31), 2**63 - 1, -(2**63)]


def _value(type_name: str, v: Any) -> bytes:
    from feast.protos.feast.types.Value_pb2 import Value

    if v is None or (isinstance(v, float) and v != v):  # noqa: PLR0124 - NaN
        return Value().SerializeToString()
    field = {"INT64": "int64_val", "INT32": "int32_val", "DOUBLE": "double_val",
             "FLOAT": "float_val", "STRING": "string_val", "BOOL": "bool_val"}[type_name]
    return Value(**{field: v}).SerializeToString()


@pytest.mark.parametrize(("type_name", "arrow", "values"), [
    ("INT64", pa.int64(), [*INT64_EDGES, None, 300, None]),
    ("INT32", pa.int32(), [0, 1, -1, 2**31 - 1, -(2**31), None, 129]),
    ("DOUBLE", pa.float64(), [0.0, -0.0, 1.5, -2.25e300, float("nan"), None, float("inf")]),
    ("FLOAT", pa.float32(), [0.0, 1.5, -3.25, float("nan"), None]),
    ("STRING", pa.string(), ["", "gold", None, "é" * 70, "x" * 300, "食品", None]),
    ("BOOL", pa.bool_(), [True, False, None, True]),
])
def test_values_are_the_bytes_of_feasts_value_protos(type_name: str, arrow: pa.DataType,
                                                      values: list[Any]) -> None:
    column = pa.array(values, type=arrow)
    got = rc.value_protos(column, type_name)
    assert got is not None
    want = [_value(type_name, v.as_py() if hasattr(v, "as_py") else v) for v in column]
    assert got.rows() == want
    # a chunked, sliced column (as a record batch of a larger table hands it over)
    sliced = pa.chunked_array([column.slice(1)])
    assert rc.value_protos(sliced, type_name).rows() == want[1:]  # type: ignore[union-attr]


def test_int64_lists_are_feasts() -> None:
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    lists = [[1, 300, -1], [], None, [2**63 - 1], [0] * 40, None, [7]]
    want = [v.SerializeToString()
            for v in python_values_to_proto_values(lists, ValueType.INT64_LIST)]
    column = pa.array(lists, type=pa.list_(pa.int64()))
    assert rc.value_protos(column, "INT64_LIST").rows() == want  # type: ignore[union-attr]
    sliced = pa.chunked_array([column.slice(2)])
    assert rc.value_protos(sliced, "INT64_LIST").rows() == want[2:]  # type: ignore[union-attr]


def test_an_unknown_type_is_left_to_feast() -> None:
    assert rc.value_protos(pa.array([[1.5]]), "DOUBLE_LIST") is None


def test_varints_and_bulk_headers() -> None:
    from google.protobuf.internal.encoder import _VarintBytes

    values = np.array(INT64_EDGES, dtype=np.int64)
    want = [_VarintBytes(int(v) & (2**64 - 1)) for v in values]
    assert rc.varints(values).rows() == want
    lengths = np.array([0, 7, 9, 10, 99, 100, 12345, 3], dtype=np.int64)
    assert rc.bulk_headers(lengths).rows() == [b"$%d\r\n" % v for v in lengths]


def test_timestamps_are_feasts() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    instants = [dt.datetime(2025, 3, 1, tzinfo=dt.UTC),
                dt.datetime(2025, 3, 1, 12, 0, 0, 250_001, tzinfo=dt.UTC),
                dt.datetime(1970, 1, 1, 0, 0, 0, 5, tzinfo=dt.UTC),
                dt.datetime(1970, 1, 1, tzinfo=dt.UTC)]
    got, nanos = rc.timestamp_protos(pa.array(instants, type=pa.timestamp("us", tz="UTC")))
    want = []
    for t in instants:
        ts = Timestamp()
        ts.FromDatetime(t)
        want.append(ts.SerializeToString())
        assert rc.parse_timestamp(want[-1]) == ts.seconds * 10**9 + ts.nanos
    assert got.rows() == want
    assert nanos.tolist() == [rc.parse_timestamp(b) for b in want]
    assert rc.parse_timestamp(None) == 0


def test_commands_are_resp() -> None:
    keys = rc.Ragged(np.frombuffer(b"k1key2", dtype=np.uint8), np.array([2, 4]))
    values = rc.Ragged(np.frombuffer(b"xyz", dtype=np.uint8), np.array([0, 3]))
    got = rc.commands(b"HSET", keys, [b"f", values, b"g", b"h"]).rows()
    assert got == [b"*6\r\n$4\r\nHSET\r\n$2\r\nk1\r\n$1\r\nf\r\n$0\r\n\r\n$1\r\ng\r\n$1\r\nh\r\n",
                   b"*6\r\n$4\r\nHSET\r\n$4\r\nkey2\r\n$1\r\nf\r\n$3\r\nxyz\r\n$1\r\ng\r\n"
                   b"$1\r\nh\r\n"]


def test_slots_are_redis_clusters() -> None:
    from redis.crc import key_slot

    rng = np.random.default_rng(3)
    keys = rng.integers(0, 256, (2000, 37), dtype=np.uint8)
    keys[:40, 5] = ord("{")  # hash tags, with and without a closing brace after them
    keys[:20, 9] = ord("}")
    keys[40:45, 3:6] = [ord("{"), ord("}"), ord("a")]  # "{}": no tag
    got = rc.key_slots(keys)
    assert got.tolist() == [key_slot(k.tobytes()) for k in keys]


# --------------------------------------------------------------------------------------------
# On a real Redis and a real Redis Cluster.
# --------------------------------------------------------------------------------------------
def _dump(client: Any, project: str) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key)
            for key in client.scan_iter(match=b"*" + project.encode(), count=1000)
            if not key.startswith(FILL_MARK_KEY.encode())}


def _client(settings: Settings, cluster: bool) -> Any:
    import redis
    from redis.cluster import RedisCluster

    url = str(settings.redis_url)
    return RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)


def _settings(data: Path, project: str, url: str, repo: Path = REPO) -> Settings:
    return Settings(data_dir=data, feature_repo=repo, feast_project=project, redis_url=url)


def _same_as_feast(settings: Settings, cluster: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    written: dict[str, int | None] = {}
    cleared: dict[str, bool] = {}

    def spy(client: Any, project: str, spec: Any, *rest: Any, **kw: Any) -> int | None:
        written[spec.name] = real(client, project, spec, *rest, **kw)
        cleared[spec.name] = kw.get("cleared", False)
        return written[spec.name]

    client = _client(settings, cluster)
    delete_project_keys(client, settings.feast_project)  # whatever was there: fill it anew
    with monkeypatch.context() as m:  # the numpy writer, seen writing every view
        real = rw.write_view
        m.setattr(rw, "write_view", spy)
        m.setattr(rw, "CHUNK_ROWS", 64)  # several chunks, one in flight while the next is built
        run_features(settings, P, say=lambda _: None)
    assert written == {"member_activity": 300, "member_points": 300, "member_expiry": 300,
                       "item_catalogue": 300, "item_stats": 300}
    # a first fill clears the views: the writer skips reading stored event times (nothing is
    # stored), and still writes Feast's bytes (below)
    assert set(cleared.values()) == {True}
    try:
        fast = _dump(client, settings.feast_project)
        assert len(fast) > 300
        delete_project_keys(client, settings.feast_project)
        with monkeypatch.context() as m:  # the same rows through Feast's online_write_batch
            m.setattr(online_write, "redis_writer", lambda *_: None)
            run_features(settings, P, say=lambda _: None)
        assert _dump(client, settings.feast_project) == fast
    finally:
        client.close()


@pytest.mark.redis
def test_the_numpy_writer_writes_what_feast_writes(small_tables: Path, redis_url: str,
                                                   redis_project: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _same_as_feast(_settings(small_tables, redis_project, redis_url), False, monkeypatch)


@pytest.mark.redis
def test_the_numpy_writer_writes_what_feast_writes_on_a_cluster(
        small_tables: Path, redis_cluster_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import on_cluster

    with on_cluster(small_tables, f"rw_{uuid.uuid4().hex[:8]}", redis_cluster_url, tmp_path,
                    P) as settings:
        _same_as_feast(settings, True, monkeypatch)


@pytest.mark.redis
def test_an_older_row_never_replaces_a_newer_one(small_tables: Path, redis_url: str,
                                                 redis_project: str) -> None:
    settings = _settings(small_tables, redis_project, redis_url)
    run_features(settings, P, say=lambda _: None)
    fs = store.open_store(settings)
    view = fs.get_feature_view("member_points")
    spec = store_specs(fs)["member_points"]
    end = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    rows = materialise.snapshot_rows(fs, view, dt.datetime(1970, 1, 2, tzinfo=dt.UTC), end)
    first = rows.slice(0, 3)
    member = first.column("member_id")[0].as_py()
    stamp = first.column("ts")[0].as_py()

    def with_balance(table: pa.Table, ts: dt.datetime, balance: int) -> pa.Table:
        n, schema = table.num_rows, table.schema
        table = table.set_column(schema.get_field_index("ts"), "ts",
                                 pa.array([ts] * n, type=schema.field("ts").type))
        return table.set_column(schema.get_field_index("points_balance"), "points_balance",
                                pa.array([balance] * n, type=pa.int64()))

    def balance() -> Any:
        got = store.online_features(fs, "churn_v1", [{"member_id": member}])
        return got["member_points__points_balance"][0]

    client = _client(settings, False)
    try:
        before = balance()
        older = with_balance(first, stamp - dt.timedelta(days=1), 123_456)
        assert rw.write_view(client, redis_project, spec, older, "ts") == 0
        same = with_balance(first, stamp, 123_456)  # an equal event time does not replace
        assert rw.write_view(client, redis_project, spec, same, "ts") == 0
        assert balance() == before
        newer = with_balance(first, stamp + dt.timedelta(seconds=1), 123_456)
        chunks: list[int] = []
        with pytest.MonkeyPatch.context() as m:
            m.setattr(rw, "CHUNK_ROWS", 2)
            assert rw.write_view(client, redis_project, spec, newer, "ts",
                                 on_rows=chunks.append) == 3
        assert chunks == [2, 1]
        assert balance() == 123_456
        # a key TTL, or two rows of one entity, are Feast's to write
        assert rw.write_view(client, redis_project, spec, newer, "ts", ttl_seconds=60) is None
        doubled = pa.concat_tables([newer, newer])
        assert rw.write_view(client, redis_project, spec, doubled, "ts") is None
    finally:
        client.close()


def store_specs(fs: Any) -> dict[str, Any]:
    from recsvc.adapters.online import registry_specs

    return registry_specs(fs)[0]
