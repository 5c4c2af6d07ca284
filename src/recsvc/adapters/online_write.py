"""Writing one view's rows into the online store in Feast's own layout, and clearing it.

On Redis the numpy writer (`redis_write`) writes the bytes Feast would; elsewhere (and for
what it leaves) the rows go through the online store's `online_write_batch` as ValueProtos
built from Python lists (`arrow_to_online_rows`, equal to Feast's conversion). `clear_online`
removes a project's values of some views before a rewrite; `delete_project_keys` a throw-away
project's Redis hashes (tests and benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from recsvc.adapters.feast import feast_errors

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

    from recsvc.adapters.online_plan import ViewSpec

WRITE_BATCH_ROWS = 10_000

# Scalar value types written directly; anything else goes through Feast's own conversion.
_PROTO_FIELD = {"INT64": "int64_val", "INT32": "int32_val", "DOUBLE": "double_val",
                "FLOAT": "float_val", "STRING": "string_val", "BOOL": "bool_val"}


def proto_values(column: pa.Array, value_type: Any) -> list[Any] | None:
    """ValueProtos for one column as Feast builds them (null and NaN: an empty Value).

    Equal values share one message (Feast only serialises them); floats are not shared,
    because 0.0 == -0.0 would merge two different encodings.
    """
    from feast.protos.feast.types.Value_pb2 import Value

    attr = _PROTO_FIELD.get(value_type.name)
    if attr is None:
        return None
    empty = Value()
    shared: dict[Any, Any] = {None: empty}
    share = attr not in ("double_val", "float_val")
    out = []
    for v in column.to_pylist():
        proto = shared.get(v) if share else None
        if proto is None:
            proto = empty if v is None or v != v else Value(**{attr: v})  # noqa: PLR0124 - NaN
            if share:
                shared[v] = proto
        out.append(proto)
    return out


def arrow_to_online_rows(batch: pa.RecordBatch, view: FeatureView) -> list[Any]:
    """(entity key, {feature: Value}, event time, None) rows, as Feast's materialisation makes.

    Feast's `_convert_arrow_to_proto` goes through pandas' `isna` per value, which was over
    half of the time of a 100,000-member load; this builds the same protos from Python lists
    (tests/test_features.py checks they are equal) and falls back to Feast for other types.
    """
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.utils import _convert_arrow_to_proto

    join_keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
    columns = {f.name: f.dtype.to_value_type() for f in view.features}
    values: dict[str, list[Any]] = {}
    for name, vtype in [*columns.items(), *join_keys.items()]:
        converted = proto_values(batch.column(name), vtype)
        if converted is None:
            return _convert_arrow_to_proto(batch, view, join_keys)
        values[name] = converted
    keys = list(join_keys)
    entity_keys = [EntityKey(join_keys=keys, entity_values=list(vs))
                   for vs in zip(*(values[k] for k in keys), strict=True)]
    names = list(columns)
    feature_rows = [dict(zip(names, vs, strict=True))
                    for vs in zip(*(values[n] for n in names), strict=True)]
    assert view.batch_source is not None
    # naive UTC datetimes, as Feast's conversion hands them to the online stores
    stamps = batch.column(view.batch_source.timestamp_field).cast(pa.timestamp("us")).to_pylist()
    return list(zip(entity_keys, feature_rows, stamps, [None] * batch.num_rows, strict=True))


def write_online(store: FeatureStore, view: FeatureView, table: pa.Table,
                 on_rows: Any = None, spec: ViewSpec | None = None, *,
                 cleared: bool = False) -> None:
    """Write offline-shaped rows into the online store, in Feast's own layout, in batches.

    On Redis (single or cluster) the numpy writer (`recsvc.adapters.redis_write`) writes the
    bytes Feast would, several times faster; elsewhere, and for a batch it leaves, the rows go
    through the online store's `online_write_batch`, as Feast's materialisation does, but
    without its Dask pass over the whole offline history. `spec`: the view as the registry
    describes it to the readers (`online.registry_specs`), when the caller has it already.
    `cleared`: the view's online rows were just deleted (`materialize`'s).
    """
    fast = redis_writer(store, view, spec)
    if fast is not None and fast(table, on_rows, cleared) is not None:
        return
    provider = store._get_provider()
    for batch in table.to_batches(max_chunksize=WRITE_BATCH_ROWS):
        rows = arrow_to_online_rows(batch, view)
        provider.online_write_batch(store.config, view, rows, progress=None)
        if on_rows is not None:
            on_rows(batch.num_rows)


def redis_writer(store: FeatureStore, view: FeatureView, spec: ViewSpec | None = None,
                  ) -> Callable[[pa.Table, Callable[[int], Any] | None, bool], int | None] | None:
    """The numpy writer (`recsvc.adapters.redis_write`) for a view on a Redis online store:
    rows in, rows written out, None when it leaves the rows to Feast (a view it does not
    encode, or a cluster whose slots are moving: rewriting rows already written is
    harmless, the newer-time rule keeps them). None for any other store."""
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis.exceptions import ResponseError

    from recsvc.adapters import redis_write
    from recsvc.adapters.online import registry_specs

    online = store._get_provider().online_store
    if not isinstance(online, RedisOnlineStore):
        return None
    if spec is None:
        spec = registry_specs(store)[0].get(view.name)
    if spec is None or view.batch_source is None:
        return None
    client = online._get_client(store.config.online_store)
    config = store.config.online_store
    ts_field = view.batch_source.timestamp_field

    def write(table: pa.Table, on_rows: Callable[[int], Any] | None,
              cleared: bool) -> int | None:
        try:
            return redis_write.write_view(client, store.project, spec, table, ts_field,
                                          getattr(config, "key_ttl_seconds", None), on_rows,
                                          cleared=cleared)
        except (ResponseError, redis_write.SlotsMoving):
            return None

    return write


def clear_online(store: FeatureStore, views: Sequence[str] | None = None) -> None:
    """Remove this project's online values of the views (their empty tables stay).

    Needed before rewriting values with timestamps that are not newer: Feast's Redis store
    skips a write whose event time is not after the stored one, SQLite's overwrites, and
    the two must not diverge.
    """
    with feast_errors("clear the online store"):
        names = list(views) if views else [v.name for v in store.list_feature_views()]
        fvs = [store.get_feature_view(n) for n in names]
        entities = store.list_entities()
        online = store._get_provider().online_store
        online.update(store.config, tables_to_delete=fvs, tables_to_keep=[],
                      entities_to_delete=[], entities_to_keep=entities, partial=True)
        online.update(store.config, tables_to_delete=[], tables_to_keep=fvs,
                      entities_to_delete=[], entities_to_keep=entities, partial=True)


def delete_project_keys(client: Any, project: str) -> int:
    """Delete a project's Redis hashes (keys end with the project name); returns the count.

    For tests and benchmarks that fill the shared Redis under a throw-away project name.
    """
    pattern = b"*" + project.encode()
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted
