"""Fast online feature reads from Feast's own Redis and SQLite layouts, equal to the SDK's: what
every reader shares (the port, request plans from the registry, `open_reader`); the readers
themselves are `online_redis` and `online_sqlite`, what a plan holds `online_plan`, their member
cache `row_cache`, the value codec `feast_codec`."""

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
# Values are the SDK's (`feast.online_features`): int, float, str, None — tests/
# test_online_reader.py compares both on real stores. Like Feast 0.67's `get_online_features`
# for a service without `precompute_online`, no view ttl is applied: an old row is served as
# the SDK serves it (Redis's own `key_ttl_seconds` expiry still happens in Redis).
# Configuration is the Feast store recsvc opened (project, store type and address, entity key
# serialisation, registry); errors leave through `feast.feast_errors`, so a Redis or SQLite
# failure is FeatureStoreUnavailable.

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from recsvc.adapters.feast import feast_errors
from recsvc.adapters.feast_codec import SCALAR_TYPES, EntityKeyCodec, value_decoder
from recsvc.adapters.online_plan import (
    Column,
    Plan,
    ProjectionSpec,
    Services,
    ViewSpec,
    decode_columns,
)
from recsvc.errors import ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore

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


class BaseReader(OnlineReader):
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
                                      value_decoder(vtype), vtype.name in SCALAR_TYPES))
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
        return decode_columns(plan, slots)

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
# Construction from the store recsvc opened.
# --------------------------------------------------------------------------------------------
def open_reader(feast_store: FeatureStore, *, redis_timeout_s: float = REDIS_TIMEOUT_S,
                sqlite_timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
                sqlite_mmap_bytes: int = SQLITE_MMAP_BYTES,
                sqlite_cache_rows: int = SQLITE_CACHE_ROWS) -> OnlineReader:
    """The reader for the store's online store, configured from its RepoConfig alone."""
    from recsvc.adapters.online_redis import RedisReader, redis_client
    from recsvc.adapters.online_sqlite import SqliteReader, sqlite_path

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
