"""Fast online feature reads from Feast's own Redis and SQLite layouts, equal to the SDK's."""

# Why: `get_online_features` costs milliseconds per call for a member and 200 items, almost all
# of it Python-side work per value (FACTS.md), while the stores answer in well under one.
# - Redis: one hash per entity key (Feast's serialised entity key followed by the project
#   name); fields are the 4-byte murmur3 hashes of "<view>:<feature>" holding serialised
#   `ValueProto`s. One HMGET per entity for all fields of all requested views, the request
#   written to the socket as one pre-encoded pipeline.
# - SQLite: one table per view (`<project>_<view>`), one row per (entity key, feature name)
#   with a `ValueProto` blob; one statement per request joins the keys with each view's table.
#   SQLite hands Python one row per value (~0.3 us each, 2,800 for 200 items), so decoded
#   entities are also kept until another connection commits to the file (SqliteReader).
# Values are the SDK's (`store.online_features`): int, float, str, None — tests/
# test_online_reader.py compares both on real stores. Like Feast 0.67's `get_online_features`
# for a service without `precompute_online`, no view ttl is applied: an old row is served as
# the SDK serves it (Redis's own `key_ttl_seconds` expiry still happens in Redis).
# Configuration is the Feast store recsvc opened (project, store type and address, entity key
# serialisation, registry); errors leave through `store.feast_errors`, so a Redis or SQLite
# failure is FeatureStoreUnavailable.

from __future__ import annotations

import itertools
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from recsvc.adapters.feast import feast_errors
from recsvc.data.views import feature_name
from recsvc.errors import ConfigError, InvalidArgument

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.value_type import ValueType

# A socket timeout per send/receive: a hung Redis must fail a request in tens of
# milliseconds (the service then answers from defaults), not after redis-py's default retries.
REDIS_TIMEOUT_S = 0.05
# How long a read waits while a writer (materialisation) holds the SQLite file's lock.
SQLITE_BUSY_TIMEOUT_S = 0.2
# Entity keys per SQLite statement: under SQLITE_MAX_VARIABLE_NUMBER of any build (999).
SQLITE_CHUNK = 512
# Address space SQLite may map of the online store file (0: read() each page instead).
SQLITE_MMAP_BYTES = 1 << 30
# Decoded entity rows kept per request shape (0: no cache), see SqliteReader.
SQLITE_CACHE_ROWS = 100_000
# Decoded entity rows kept per request shape, invalidated by Redis (0: no cache), _Tracking.
REDIS_CACHE_ROWS = 100_000

Decoder = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------
# The interface.
# --------------------------------------------------------------------------------------------
class OnlineReader(Protocol):
    """Online feature values of entities, by view or by feature service."""

    def read(self, view_names: Sequence[str], entity_key: str,
             ids: Sequence[Any]) -> Mapping[str, list[Any]]:
        """All features of the views for the ids (all views keyed by `entity_key`), as
        {"<view>__<feature>": [value per id, None where missing]}; no join-key column."""
        ...

    def read_service(self, service_name: str, entity_key: str,
                     ids: Sequence[Any]) -> Mapping[str, list[Any]]:
        """The service's features of the views keyed by `entity_key`, named as the SDK names
        them ("<view or alias>__<feature>"): a member's and the items' parts of one service
        are read separately, the member once rather than on every item row."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    @staticmethod
    def from_store(feast_store: FeatureStore, *, redis_timeout_s: float = REDIS_TIMEOUT_S,
                   sqlite_timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
                   sqlite_mmap_bytes: int = SQLITE_MMAP_BYTES,
                   sqlite_cache_rows: int = SQLITE_CACHE_ROWS) -> OnlineReader:
        """The reader for the store's online store (Redis or SQLite), from its registry."""
        return open_reader(feast_store, redis_timeout_s=redis_timeout_s,
                           sqlite_timeout_s=sqlite_timeout_s,
                           sqlite_mmap_bytes=sqlite_mmap_bytes,
                           sqlite_cache_rows=sqlite_cache_rows)


# --------------------------------------------------------------------------------------------
# ValueProto decoding: the SDK's Python values, without building a message per value.
# --------------------------------------------------------------------------------------------
# Wire tags of Value's scalar oneof fields (field number << 3 | wire type), see Value.proto.
_TAG_STRING = 0x12  # string_val = 2, length-delimited
_TAG_INT32 = 0x18  # int32_val = 3, varint
_TAG_INT64 = 0x20  # int64_val = 4, varint
_TAG_DOUBLE = 0x29  # double_val = 5, 64-bit
_TAG_FLOAT = 0x35  # float_val = 6, 32-bit
_TAG_BOOL = 0x38  # bool_val = 7, varint
VALUE_TAGS = {"STRING": _TAG_STRING, "INT32": _TAG_INT32, "INT64": _TAG_INT64,
              "DOUBLE": _TAG_DOUBLE, "FLOAT": _TAG_FLOAT, "BOOL": _TAG_BOOL}
"""The tags by value type, for the writer that encodes what these decoders read."""
_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from


def _generic_decoder(value_type: ValueType) -> Decoder:
    """Feast's own conversion (what `OnlineResponse.to_dict` does): every other type, and any
    blob that is not the canonical encoding a fast decoder expects."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    parse = Value.FromString

    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None  # missing, or an empty Value: Feast's null
        return feast_value_type_to_python_type(parse(blob), value_type)

    return decode


def _varint(blob: bytes, bits: int) -> int | None:
    """The signed integer of a blob holding exactly one tag byte and one varint, else None.

    Protobuf keeps the low `bits` bits of a varint and reads them as two's complement
    (negative numbers are sign-extended to 10 bytes on the wire)."""
    result = shift = 0
    last = len(blob) - 1
    for i in range(1, last + 1):
        byte = blob[i]
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if i != last:
                return None  # more fields follow: not the shape this decoder knows
            result &= (1 << bits) - 1
            return result - (1 << bits) if result >> (bits - 1) else result
    return None


def _int_decoder(tag: int, bits: int, generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if blob[0] == tag:
            n = len(blob)
            # one- and two-byte varints (0..16383) are most counts and prices: inline them
            if n == 2:
                v = blob[1]
                if v < 0x80:
                    return v
            elif n == 3:
                lo, hi = blob[1], blob[2]
                if lo >= 0x80 and hi < 0x80:
                    return (lo & 0x7F) | (hi << 7)
            value = _varint(blob, bits)
            if value is not None:
                return value
        return generic(blob)

    return decode


def _double_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if len(blob) == 9 and blob[0] == _TAG_DOUBLE:
            return _unpack_double(blob, 1)[0]
        return generic(blob)

    return decode


def _float_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if len(blob) == 5 and blob[0] == _TAG_FLOAT:
            return _unpack_float(blob, 1)[0]
        return generic(blob)

    return decode


def _string_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        # strings shorter than 128 bytes have a one-byte length; longer ones go the slow way
        if blob[0] == _TAG_STRING and len(blob) > 1 and blob[1] == len(blob) - 2:
            return blob[2:].decode("utf-8")
        return generic(blob)

    return decode


def _bool_decoder(generic: Decoder) -> Decoder:
    def decode(blob: bytes | None) -> Any:
        if not blob:
            return None
        if len(blob) == 2 and blob[0] == _TAG_BOOL and blob[1] < 2:
            return blob[1] == 1
        return generic(blob)

    return decode


# Value types whose Python values are immutable scalars (list types become lists).
_SCALAR_TYPES = frozenset({"INT64", "INT32", "DOUBLE", "FLOAT", "STRING", "BOOL", "BYTES"})


def value_decoder(value_type: ValueType) -> Decoder:
    """bytes of a serialised ValueProto (or None) -> the SDK's Python value for that type.

    The fast decoders read the canonical encoding of their declared type; anything else
    (another oneof field than declared, extra fields, long strings) goes through Feast's
    conversion, so the result is the SDK's whatever was stored."""
    generic = _generic_decoder(value_type)
    fast = _FAST_DECODERS.get(value_type.name)
    return fast(generic) if fast is not None else generic


_FAST_DECODERS: dict[str, Callable[[Decoder], Decoder]] = {
    "INT64": lambda generic: _int_decoder(_TAG_INT64, 64, generic),
    "INT32": lambda generic: _int_decoder(_TAG_INT32, 32, generic),
    "DOUBLE": _double_decoder,
    "FLOAT": _float_decoder,
    "STRING": _string_decoder,
    "BOOL": _bool_decoder,
}


# --------------------------------------------------------------------------------------------
# Entity keys: Feast's serialisation, with the fixed part computed once.
# --------------------------------------------------------------------------------------------
class EntityKeyCodec:
    """ids -> Feast's serialised entity keys of one join key (without the project suffix)."""

    def __init__(self, join_key: str, value_type: ValueType, version: int) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        self.join_key = join_key
        self._args = (join_key, value_type, version)

        def feast_key(value: Any) -> bytes:
            proto = python_values_to_proto_values([value], value_type)[0]
            return serialize_entity_key(EntityKey(join_keys=[join_key], entity_values=[proto]),
                                        entity_key_serialization_version=version)

        self._slow = feast_key
        self._prefix: bytes | None = None  # what every key of this join key starts with
        if value_type.name == "INT64" and version >= 3:
            # v3 of one INT64 key is a fixed prefix (key count, name, value type and length)
            # followed by the 8-byte little-endian value; checked against Feast's own here
            probe = (0, 1, -1, 2**63 - 1, -(2**63), 1234567)
            prefix = feast_key(0)[:-8]
            if all(prefix + struct.pack("<q", v) == feast_key(v) for v in probe):
                self._prefix = prefix
        self.keys: Callable[[Sequence[Any]], list[bytes]] = (
            self._fast_keys if self._prefix is not None else self._slow_keys)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its arguments (a batch job's partitions carry it to their workers)."""
        return (EntityKeyCodec, self._args)

    @property
    def prefix(self) -> bytes | None:
        """The bytes every serialised key of this join key starts with (None: not known)."""
        return self._prefix

    def key_matrix(self, ids: Any) -> Any:
        """The serialised keys of int64 `ids` (a numpy array) as the rows of a uint8 matrix:
        the prefix, then the 8-byte little-endian value (only where `prefix` is known)."""
        import numpy as np

        prefix = self._prefix
        assert prefix is not None
        rows = len(ids)
        head = np.frombuffer(prefix, dtype=np.uint8)
        return np.concatenate([np.broadcast_to(head, (rows, len(head))),
                               np.asarray(ids, dtype="<i8").view(np.uint8).reshape(rows, 8)],
                              axis=1)

    def _fast_keys(self, ids: Sequence[Any]) -> list[bytes]:
        prefix = self._prefix
        assert prefix is not None
        pack = struct.pack
        try:
            return [prefix + pack("<q", i) for i in ids]
        except struct.error:
            bad = next(i for i in ids if not isinstance(i, int) or not -(2**63) <= i < 2**63)
            raise InvalidArgument(self.join_key, f"not a 64-bit integer: {bad!r}") from None

    def _slow_keys(self, ids: Sequence[Any]) -> list[bytes]:
        return [self._slow(i) for i in ids]


# --------------------------------------------------------------------------------------------
# What a request reads: views and features from the registry, compiled once per request shape.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewSpec:
    """A feature view as the online store holds it."""

    name: str  # the registry's name
    stored: str  # its name in the online store (with a version suffix when versioning is on)
    join_key: str | None  # None: a view on several join keys (or none), not read here
    features: tuple[tuple[str, ValueType], ...]
    codec: EntityKeyCodec | None


@dataclass(frozen=True)
class Column:
    """One output column and how to decode it."""

    name: str  # the output name, "<view or alias>__<feature>"
    view: ViewSpec
    feature: str
    decode: Decoder
    scalar: bool  # its Python values are immutable, so a cached row's may be shared


@dataclass
class Plan:
    """One request shape: its columns (views in request order, features in view order) and
    whatever the backend precomputed for them."""

    action: str  # names the read in error messages
    entity_key: str
    columns: tuple[Column, ...]
    codec: EntityKeyCodec
    backend: Any = None
    names: tuple[str, ...] = field(init=False)  # of the columns: strings, untracked by the gc
    short_names: tuple[str, ...] = field(init=False)  # the features' own, without "<view>__"

    def __post_init__(self) -> None:
        self.names = tuple(c.name for c in self.columns)
        self.short_names = tuple(feature_name(n) for n in self.names)


@dataclass(frozen=True)
class ProjectionSpec:
    """A feature service's use of a view: output prefix (its alias or name), view, features."""

    prefix: str
    view: str
    features: tuple[str, ...]


# service name -> (its projections, whether it has precompute_online)
Services = dict[str, tuple[tuple[ProjectionSpec, ...], bool]]


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
                fresh = {missing[0]: _decode_row(plan, slots)}
            else:
                decoded = _decode(plan, slots)
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


def _decode_row(plan: Plan, slots: list[Any]) -> tuple[Any, ...]:
    """One entity's fetched blobs (one per column) as the row the cache holds: `_decode` then
    `_held` of a single row, without building columns."""
    return _held([c.decode(blob) for c, blob in zip(plan.columns, slots, strict=True)])


def _decode(plan: Plan, slots: list[Any]) -> dict[str, list[Any]]:
    """Fetched blobs as the plan's columns of Python values; `slots` holds rows of
    len(columns) blobs, row-major, so a column is a stride."""
    width = len(plan.columns)
    return {c.name: list(map(c.decode, slots[j::width])) for j, c in enumerate(plan.columns)}


class _BaseReader(OnlineReader):
    """Request plans from the registry; the backends fetch raw blobs into slots."""

    def __init__(self, views: dict[str, ViewSpec],
                 services: Services, project: str) -> None:
        self.project = project
        self._views = views
        self._services = services
        self._plans: dict[tuple[Any, ...], Plan] = {}
        # compile every service's entity parts now, so no request pays for it
        for name, (projections, precomputed) in services.items():
            if precomputed:
                continue
            for key in {views[p.view].join_key for p in projections if p.view in views}:
                if key is not None:
                    self._service_plan(name, key)

    # ---- plans ---------------------------------------------------------------------------
    def _view(self, name: str) -> ViewSpec:
        spec = self._views.get(name)
        if spec is None:
            from feast.errors import FeatureViewNotFoundException

            with feast_errors(f"read feature view {name!r} online"):
                raise FeatureViewNotFoundException(name, self.project)
        assert spec is not None
        return spec

    def _make_plan(self, action: str, entity_key: str,
                   parts: Sequence[tuple[str, ViewSpec, Sequence[str]]]) -> Plan:
        columns: list[Column] = []
        codec = None
        for prefix, view, features in parts:
            if view.join_key != entity_key or view.codec is None:
                raise ConfigError(f"{action}: feature view {view.name!r} is keyed by "
                                  f"{view.join_key or 'several join keys'}, not {entity_key}")
            codec = view.codec
            types = dict(view.features)
            for feature in features:
                vtype = types[feature]
                columns.append(Column(f"{prefix}__{feature}", view, feature,
                                      value_decoder(vtype), vtype.name in _SCALAR_TYPES))
        if codec is None:
            raise ConfigError(f"{action}: no feature view keyed by {entity_key}")
        plan = Plan(action, entity_key, tuple(columns), codec)
        plan.backend = self._compile(plan)
        return plan

    def _views_plan(self, view_names: tuple[str, ...], entity_key: str) -> Plan:
        plan = self._plans.get((view_names, entity_key))
        if plan is None:
            specs = [self._view(v) for v in view_names]
            plan = self._make_plan(f"read {', '.join(view_names)} online", entity_key,
                                   [(s.name, s, [f for f, _ in s.features]) for s in specs])
            self._plans[(view_names, entity_key)] = plan
        return plan

    def _service_plan(self, service_name: str, entity_key: str) -> Plan:
        key = ("service", service_name, entity_key)
        plan = self._plans.get(key)
        if plan is None:
            action = f"read {service_name!r} online"
            found = self._services.get(service_name)
            if found is None:
                from feast.errors import FeatureServiceNotFoundException

                with feast_errors(action):
                    raise FeatureServiceNotFoundException(service_name, self.project)
            assert found is not None
            projections, precomputed = found
            if precomputed:
                raise ConfigError(f"{action}: the service has precompute_online=True, whose "
                                  f"vectors this reader does not read")
            parts = [(p.prefix, self._view(p.view), p.features) for p in projections]
            plan = self._make_plan(action, entity_key,
                                   [p for p in parts if p[1].join_key == entity_key])
            self._plans[key] = plan
        return plan

    # ---- reads ---------------------------------------------------------------------------
    def read(self, view_names: Sequence[str], entity_key: str,
             ids: Sequence[Any]) -> Mapping[str, list[Any]]:
        return self._read(self._views_plan(tuple(view_names), entity_key), ids)

    def read_service(self, service_name: str, entity_key: str,
                     ids: Sequence[Any]) -> Mapping[str, list[Any]]:
        return self._read(self._service_plan(service_name, entity_key), ids)

    def _read(self, plan: Plan, ids: Sequence[Any]) -> Mapping[str, list[Any]]:
        columns = plan.columns
        if not ids:
            return {c.name: [] for c in columns}
        keys = plan.codec.keys(ids)
        with feast_errors(plan.action):
            slots = self._fetch(plan, keys)
        return _decode(plan, slots)

    def _compile(self, plan: Plan) -> Any:
        raise NotImplementedError

    def _fetch(self, plan: Plan, keys: list[bytes]) -> list[Any]:
        """The blobs of the plan's columns for each key, row-major, None where missing."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def registry_specs(feast_store: FeatureStore) -> tuple[
        dict[str, ViewSpec], Services]:
    """Online views and services of the store's registry, as the reader uses them."""
    from feast.infra.online_stores.helpers import compute_versioned_name

    config = feast_store.config
    versioning = bool(config.registry.enable_online_feature_view_versioning)
    version = config.entity_key_serialization_version
    with feast_errors("read the feature registry"):
        views = [v for v in feast_store.list_feature_views() if v.online]
        services = feast_store.list_feature_services()
    codecs: dict[tuple[str, str], EntityKeyCodec] = {}
    specs: dict[str, ViewSpec] = {}
    for view in views:
        join = view.entity_columns
        join_key = codec = None
        if len(join) == 1:
            join_key = join[0].name
            vtype = join[0].dtype.to_value_type()
            codec = codecs.get((join_key, vtype.name))
            if codec is None:
                codec = codecs[(join_key, vtype.name)] = EntityKeyCodec(join_key, vtype, version)
        specs[view.name] = ViewSpec(
            name=view.name, stored=compute_versioned_name(view, versioning), join_key=join_key,
            features=tuple((f.name, f.dtype.to_value_type()) for f in view.features),
            codec=codec)
    mapping = {
        fs.name: (tuple(ProjectionSpec(p.name_to_use(), p.name, tuple(f.name for f in p.features))
                        for p in fs.feature_view_projections),
                  bool(getattr(fs, "precompute_online", False)))
        for fs in services}
    return specs, mapping


# --------------------------------------------------------------------------------------------
# Redis.
# --------------------------------------------------------------------------------------------
def resp_bulk(data: bytes) -> bytes:
    """`data` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


@dataclass(frozen=True)
class _RedisPlan:
    fields: tuple[bytes, ...]
    head: bytes  # "*<n>\r\n$5\r\nHMGET\r\n": the command up to its key
    tail: bytes  # the project suffix of the key and the encoded field list


class _Tracking:
    """Redis's server-assisted client-side caching, for the rows a RedisReader keeps.

    One connection subscribes to `__redis__:invalidate`; another turns tracking on in
    broadcasting mode (every write to a key under the entity keys' prefixes is announced)
    redirected to the first. Every read first takes the announcements that have arrived
    (`drain`, a non-blocking poll of the socket) and drops those keys' rows, so a write that
    completed before a read began is never answered from the cache: on one host Redis has
    written the announcement before it acknowledges the write. If the subscription is lost the
    cache is emptied and not used until tracking is set up again."""

    CHANNEL = b"__redis__:invalidate"

    def __init__(self, client: Any, prefixes: Sequence[bytes] | None, suffix: bytes,
                 cache: RowCache) -> None:
        pool = client.connection_pool
        self._make = lambda: pool.connection_class(**pool.connection_kwargs)
        self._prefixes = prefixes
        self._suffix = suffix
        self._cache = cache
        self._lock = threading.Lock()
        self._conns: tuple[Any, Any] | None = None
        self._retry_at = 0.0
        self.subscriber_id: int | None = None  # the subscribed connection's CLIENT ID

    def _start(self) -> None:
        sub, tracker = self._make(), self._make()
        try:
            sub.connect()
            sub.send_command("CLIENT", "ID")
            client_id = sub.read_response()
            sub.send_command("SUBSCRIBE", self.CHANNEL)
            sub.read_response()
            tracker.connect()
            args: list[Any] = ["CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST"]
            for prefix in self._prefixes or ():
                args += ["PREFIX", prefix]
            tracker.send_command(*args)
            tracker.read_response()
        except Exception:
            sub.disconnect()
            tracker.disconnect()
            raise
        self._cache.clear()  # what was held before tracking began is not known to be fresh
        self._conns = (sub, tracker)
        self.subscriber_id = int(client_id)

    def _stop(self) -> None:
        conns, self._conns = self._conns, None
        self._cache.clear()
        for conn in conns or ():
            conn.disconnect()

    def drain(self, start: bool = True, wait: bool = True) -> bool:
        """Take the announcements that have arrived; True while the cache may be used.
        Without `start`, tracking that is not running is not (re)started here: connecting
        may wait on the network. Without `wait`, a drain another thread is in (restarting
        tracking against a Redis that answers slowly holds the lock up to its timeouts) is
        not waited for: False, the cache not known fresh now."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            return self._drain(start)
        finally:
            self._lock.release()

    def _drain(self, start: bool) -> bool:
        import redis

        if self._conns is None:
            if not start:
                return False
            now = time.monotonic()
            if now < self._retry_at:
                return False
            self._retry_at = now + 1.0
            try:
                self._start()
            except redis.RedisError:
                return False
        assert self._conns is not None
        sub = self._conns[0]
        try:
            while sub.can_read(timeout=0):
                message = sub.read_response()
                if not (isinstance(message, list) and len(message) == 3
                        and message[0] == b"message"):
                    continue
                keys = message[2]
                if keys is None:  # FLUSHDB / FLUSHALL
                    self._cache.clear()
                    continue
                size = len(self._suffix)
                self._cache.drop([k[:-size] if size and k.endswith(self._suffix) else k
                                  for k in keys])
        except (redis.RedisError, OSError):
            self._stop()
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._stop()


class RedisReader(_BaseReader):
    """Feast's Redis layout read with redis-py.

    With a plain (or Sentinel-managed) Redis, a request is one write of pre-encoded HMGETs
    and one read per entity from a pooled connection: redis-py's pipeline spent ~1 ms packing
    200 commands of 15 arguments. A Redis Cluster goes through redis-py's cluster pipeline,
    which routes each key to its node.
    """

    def __init__(self, views: dict[str, ViewSpec],
                 services: Services, project: str,
                 client: Any, *, use_pipeline: bool = False,
                 cache_rows: int = REDIS_CACHE_ROWS) -> None:
        import redis

        self._client = client
        self._suffix = project.encode("utf-8")
        self._raw = isinstance(client, redis.Redis) and not use_pipeline
        self.cache = RowCache(cache_rows)
        self._tracking: _Tracking | None = None
        if cache_rows and isinstance(client, redis.Redis):  # a Cluster is read uncached
            codecs = [v.codec for v in views.values() if v.codec is not None]
            prefixes = None if any(c.prefix is None for c in codecs) else sorted(
                {c.prefix for c in codecs if c.prefix is not None})
            self._tracking = _Tracking(client, prefixes, self._suffix, self.cache)
        super().__init__(views, services, project)

    def _read(self, plan: Plan, ids: Sequence[Any]) -> Mapping[str, list[Any]]:
        if not ids or self._tracking is None:
            return super()._read(plan, ids)
        keys = plan.codec.keys(ids)
        with feast_errors(plan.action):
            if not self._tracking.drain():
                return _decode(plan, self._fetch(plan, keys))
            return self.cache.read(plan, keys, self._fetch)

    def read_nowait(self, service_name: str, entity_key: str,
                    ids: Sequence[Any]) -> Mapping[str, list[Any]] | None:
        """`read_service` answered from memory when every row is cached and Redis has
        announced no write to them, else None: never waits on Redis (the announcements are
        taken with a non-blocking poll), so a caller on an event loop may ask."""
        if not ids or self._tracking is None:
            return None
        plan = self._service_plan(service_name, entity_key)
        keys = plan.codec.keys(ids)
        try:
            if not self._tracking.drain(start=False, wait=False):
                return None
        except Exception:  # whatever the subscription did, the store read will tell
            return None
        return self.cache.peek(plan, keys)

    def _packed(self, plan: Plan, keys: list[bytes]) -> bytes:
        # "$<len of key + project>\r\n<key>" then the shared tail: the key's bulk string is
        # split around the entity key bytes so the project and fields are encoded once
        rp: _RedisPlan = plan.backend
        size = len(self._suffix)
        return b"".join([b"%b$%d\r\n%b%b" % (rp.head, len(k) + size, k, rp.tail)
                         for k in keys])

    def cache_stats(self) -> tuple[int, int, int]:
        """(hits, misses, rows held)."""
        return self.cache.hits, self.cache.misses, self.cache.size()

    def _compile(self, plan: Plan) -> _RedisPlan:
        from feast.infra.online_stores.helpers import _mmh3

        fields = tuple(_mmh3(f"{c.view.stored}:{c.feature}") for c in plan.columns)
        head = b"*%d\r\n%b" % (len(fields) + 2, resp_bulk(b"HMGET"))
        tail = self._suffix + b"\r\n" + b"".join(resp_bulk(f) for f in fields)
        return _RedisPlan(fields, head, tail)

    def _fetch(self, plan: Plan, keys: list[bytes]) -> list[Any]:
        rp: _RedisPlan = plan.backend
        if not self._raw:
            suffix = self._suffix
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key + suffix, rp.fields)
                replies = pipe.execute()
            return list(itertools.chain.from_iterable(replies))
        packed = self._packed(plan, keys)
        pool = self._client.connection_pool
        conn = pool.get_connection()
        done = False
        try:
            conn.send_packed_command([packed], check_health=False)
            read = conn.read_response
            replies = [read() for _ in keys]
            done = True
        finally:
            if not done:
                conn.disconnect()  # replies may be left unread on the socket
            pool.release(conn)
        return list(itertools.chain.from_iterable(replies))

    def close(self) -> None:
        if self._tracking is not None:
            self._tracking.close()
        self._client.close()


def redis_client(online_store: Any, timeout_s: float) -> Any:
    """A redis-py client for Feast's Redis online store configuration, failing fast.

    The connection string is parsed by Feast itself (host:port,db=..,password=..,ssl=..), and
    the client is built as Feast builds it, plus socket timeouts and no retries: redis-py
    retries 3 times with up to seconds of backoff by default.
    """
    import redis
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisType
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    nodes, params = RedisOnlineStore._parse_connection_string(online_store.connection_string)
    kwargs = {**params, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
              "retry": Retry(NoBackoff(), 0)}
    kind = online_store.redis_type
    if kind == RedisType.redis_cluster:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(n["host"], int(n["port"])) for n in nodes],
                            **kwargs)
    if kind == RedisType.redis_sentinel:
        from redis.sentinel import Sentinel

        sentinel = Sentinel([(n["host"], int(n["port"])) for n in nodes], **kwargs)
        return sentinel.master_for(online_store.sentinel_master)
    return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **kwargs)


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


class _SqliteThread:
    """One thread's connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()


class SqliteReader(_BaseReader):
    """Feast's SQLite layout read with sqlite3: one read-only connection per thread.

    Decoded rows are kept per request shape (up to `cache_rows` entities each, shared by the
    threads) for as long as `PRAGMA data_version` says no other connection has committed to
    the file, as one connection of its own (the probe) sees it: a thread's new connection
    cannot tell what it missed, so one connection judges for all. Any write (materialisation,
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
        self._probe: tuple[int, sqlite3.Connection] | None = None  # (pid, connection)
        self._probe_version: int | None = None
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
        While a writer commits it answers None, and the caller reads on a thread."""
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
        """The probe connection, the one judge of the cache's freshness, after dropping the
        cache if anyone committed since it last looked (`PRAGMA data_version` is counted per
        connection, so one connection must judge: a thread's new connection cannot tell what
        it missed). Raises sqlite3.Error while a writer holds the lock. Under `_probe_lock`."""
        if self._probe is None or self._probe[0] != os.getpid():
            self._probe = (os.getpid(), self._connect(0.0))
        conn = self._probe[1]
        (version,) = conn.execute("PRAGMA data_version").fetchone()
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
        self._probe = None


# --------------------------------------------------------------------------------------------
# Construction from the store recsvc opened.
# --------------------------------------------------------------------------------------------
def sqlite_path(feast_store: FeatureStore) -> Path:
    """The SQLite file as Feast resolves it (relative paths are relative to the repo)."""
    config = feast_store.config
    path = Path(config.online_store.path)
    if not path.is_absolute() and config.repo_path:
        path = Path(config.repo_path) / path
    return path


def open_reader(feast_store: FeatureStore, *, redis_timeout_s: float = REDIS_TIMEOUT_S,
                sqlite_timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
                sqlite_mmap_bytes: int = SQLITE_MMAP_BYTES,
                sqlite_cache_rows: int = SQLITE_CACHE_ROWS) -> OnlineReader:
    """The reader for the store's online store, configured from its RepoConfig alone."""
    config = feast_store.config
    kind = config.online_store.type
    views, services = registry_specs(feast_store)
    project = config.project
    if kind == "redis" or str(kind).endswith("RedisOnlineStore"):
        with feast_errors("connect to the Redis online store"):
            client = redis_client(config.online_store, redis_timeout_s)
        return RedisReader(views, services, project, client)
    if kind == "sqlite" or str(kind).endswith("SqliteOnlineStore"):
        # table names come from the views' stored names, which carry any version suffix
        return SqliteReader(views, services, project, sqlite_path(feast_store),
                            timeout_s=sqlite_timeout_s, mmap_bytes=sqlite_mmap_bytes,
                            cache_rows=sqlite_cache_rows)
    raise ConfigError(f"online store type {kind!r}: the online reader reads redis or sqlite; "
                      f"use store.online_features for others")
