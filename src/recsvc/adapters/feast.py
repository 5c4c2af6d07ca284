"""The Feast feature store seam: configuration, definitions, materialisation, error mapping.

Everything that talks to Feast goes through here (jobs, tests, the gRPC service):

- `open_store(settings)` builds the effective configuration from feature_repo/feature_store.yaml
  and the settings: project from `feast_project`, registry and SQLite file under
  `<data_dir>/feast/`, Feast's Redis online store when `redis_url` is set. Each online store
  kind has its own registry file, because the registry also holds the materialisation
  intervals, and SQLite's must never make Redis look filled (or the reverse).
- `load_definitions(data_dir, feature_repo)` executes feature_repo/definitions.py with the
  sources pointing at `<data_dir>/features/`.
- `materialize(...)` fills the online store from the latest snapshot per entity.
- `feast_errors(action)` is the one place where Feast, Redis and SQLite errors become the
  project's own.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import sqlite3
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import yaml

from recsvc.errors import (
    ConfigError,
    DataMissing,
    FeatureStoreError,
    FeatureStoreUnavailable,
    RecsvcError,
)
from recsvc.settings import Settings

if TYPE_CHECKING:
    from feast import Entity, FeatureService, FeatureStore, FeatureView
    from feast.repo_config import RepoConfig


log = logging.getLogger(__name__)

REPO_YAML = "feature_store.yaml"
DEFINITIONS = "definitions.py"


# --------------------------------------------------------------------------------------------
# Errors: the one mapping from Feast, Redis and SQLite to recsvc.errors.
# --------------------------------------------------------------------------------------------
def map_error(exc: BaseException, action: str) -> RecsvcError | None:
    """The project's error for a lower-layer one, or None when it is not ours to map."""
    import redis.exceptions as rx
    from feast.errors import FeastError, FeastObjectNotFoundException
    from feast.repo_config import FeastConfigError
    from pydantic import ValidationError

    if isinstance(exc, RecsvcError):
        return exc
    if isinstance(exc, rx.ResponseError) and "DB index" in str(exc):
        return ConfigError(f"{action}: RECSVC_REDIS_URL names a database Redis does not have")
    # First match wins: the specific Redis errors come before their base classes.
    table: list[tuple[tuple[type[BaseException], ...], Callable[[str], RecsvcError], str]] = [
        ((rx.AuthenticationError, rx.AuthorizationError), ConfigError,
         "Redis refused the credentials in RECSVC_REDIS_URL"),
        ((rx.RedisError,), FeatureStoreUnavailable, "Redis"),
        ((sqlite3.Error,), FeatureStoreUnavailable, "SQLite online store"),
        ((FeastObjectNotFoundException,), DataMissing, "run `recsvc features` first"),
        ((FeastConfigError, ValidationError), ConfigError, "invalid Feast configuration"),
        ((FileNotFoundError,), DataMissing, "not found (run `recsvc features`)"),
        ((FeastError,), FeatureStoreError, "Feast"),
    ]
    for types, make, what in table:
        if isinstance(exc, types):
            return make(f"{action}: {what}: {exc}")
    return None


@contextmanager
def feast_errors(action: str) -> Iterator[None]:
    """Run a block that calls Feast; its errors leave as recsvc errors naming `action`."""
    try:
        yield
    except Exception as exc:
        mapped = map_error(exc, action)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


# --------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------
def online_kind(settings: Settings) -> str:
    return "redis" if settings.redis_url else "sqlite"


def feast_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "feast"


def redis_connection_string(url: str, *, cluster: bool = False) -> str:
    """Feast's `host:port,db=N,password=...` form of a `redis://[[user]:password@]host:port/db`.

    Values are JSON-quoted, because Feast JSON-decodes them: a password "123" or "true" must
    stay a string. Redis Cluster has only database 0, so a cluster URL may not name another.
    """
    name = "RECSVC_REDIS_URL"
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"{name}: not a redis:// URL: {exc}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"{name}: expected redis://[:password@]host:port/db, got {url!r}")
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ConfigError(f"{name}: the database must be a number, got {path!r}")
    db = int(path)
    out = [f"{parts.hostname}:{port}"]
    if cluster:
        if db:
            raise ConfigError(f"{name}: Redis Cluster has only database 0, got {db}")
    else:
        out.append(f"db={db}")
    for key, raw in (("username", parts.username), ("password", parts.password)):
        if raw:
            value = unquote(raw)
            if "," in value:
                raise ConfigError(f"{name}: Feast cannot pass a {key} containing ','")
            out.append(f"{key}={json.dumps(value)}")
    if parts.scheme == "rediss":
        out.append("ssl=true")
    return ",".join(out)


def registry_path(settings: Settings) -> Path:
    """The registry file of this online store kind (it holds its materialisation state)."""
    return feast_dir(settings.data_dir) / f"registry.{online_kind(settings)}.db"


def repo_config_dict(settings: Settings, *, offline: bool = True) -> dict[str, Any]:
    """feature_store.yaml with the settings applied (paths absolute), as a plain mapping;
    without `offline`, the serving process's store, which has no offline engine."""
    path = Path(settings.feature_repo) / REPO_YAML
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the Feast configuration: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(os.path.expandvars(text)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    kind = online_kind(settings)
    home = feast_dir(settings.data_dir)
    registry = raw.get("registry") or {}
    if isinstance(registry, str):
        registry = {"path": registry}
    online = dict(raw.get("online_store") or {})
    if settings.redis_url:
        # A production yaml may configure Redis already (redis_type: redis_cluster,
        # key_ttl_seconds...); keep those and take only the address from the settings.
        kept = online if online.get("type") == "redis" else {}
        cluster = kept.get("redis_type") == "redis_cluster"
        online = {**kept, "type": "redis",
                  "connection_string": redis_connection_string(settings.redis_url,
                                                               cluster=cluster)}
    elif online.get("type", "sqlite") == "sqlite":
        online = {**online, "type": "sqlite", "path": str(home / f"online.{kind}.db")}
    return {
        **raw,
        "project": settings.feast_project,
        "provider": raw.get("provider", "local"),
        "registry": _registry(registry, settings),
        "online_store": online,
        "offline_store": (raw.get("offline_store") or {"type": "file"}) if offline
        else {"type": "recsvc.adapters.serving_store.ServingOfflineStore"},
    }


def _registry(section: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A local file registry moves under the data directory; a shared one (sql, s3://, gs://),
    as several service replicas in production need, is kept as configured."""
    kind = section.get("registry_type", "file")
    path = str(section.get("path", ""))
    if kind != "file" or "://" in path:
        return section
    return {**section, "registry_type": "file", "path": str(registry_path(settings))}


def repo_config(settings: Settings, *, offline: bool = True) -> RepoConfig:
    from feast.repo_config import RepoConfig

    with feast_errors("configure the feature store"):
        config = RepoConfig(**repo_config_dict(settings, offline=offline))
    config.repo_path = Path(settings.feature_repo).resolve()
    return config


def write_cli_config(settings: Settings) -> Path:
    """Write the effective configuration where the `feast` CLI can be pointed at it (-f).

    A Redis password is not written: the file says ${RECSVC_REDIS_PASSWORD} instead, which
    Feast expands from the environment when it reads the file.
    """
    conf = repo_config_dict(settings)
    online = conf["online_store"]
    if "connection_string" in online:
        parts = [p if not p.startswith("password=") else "password=${RECSVC_REDIS_PASSWORD}"
                 for p in online["connection_string"].split(",")]
        conf["online_store"] = {**online, "connection_string": ",".join(parts)}
    path = feast_dir(settings.data_dir) / f"feature_store.{online_kind(settings)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by recsvc ({online_kind(settings)} online store). From the project "
              f"root:\n#   RECSVC_DATA_DIR={Path(settings.data_dir).resolve()} "
              f"feast -c {Path(settings.feature_repo).resolve()} -f {path} feature-views list\n")
    path.write_text(header + yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")
    return path


def open_store(settings: Settings, *, offline: bool = True) -> FeatureStore:
    """The Feast FeatureStore for these settings (SQLite or Redis online store); without
    `offline`, as the server opens it: online reads only, no offline engine loaded."""
    from feast import FeatureStore

    _quiet_upstream()
    config = repo_config(settings, offline=offline)
    try:
        if offline:  # the jobs write what the `feast` CLI needs; the server reads only
            write_cli_config(settings)
    except OSError as exc:  # a read-only data volume is fine: it is a convenience
        log.debug("not writing the CLI configuration: %s", exc)
    with feast_errors("open the feature store"):
        return FeatureStore(repo_path=str(config.repo_path), config=config)


class _DropMessage(logging.Filter):
    """Drops a library's log records that start with `prefix`; every other record passes."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@functools.cache
def _quiet_upstream() -> None:
    """Silence two upstream messages that tell a user nothing, once per process and nothing
    else: Feast logs "Registry cache expired, so refreshing" at INFO on every first read of
    the registry (nine times in `make run`), and ibis 12 calls DuckDB 2's deprecated
    `fetch_arrow_table()` on every offline query (a DeprecationWarning a user cannot act on)."""
    logging.getLogger("feast.infra.registry.registry").addFilter(
        _DropMessage("Registry cache expired"))
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated",
                            category=DeprecationWarning, module=r"ibis\.backends\.duckdb")


# --------------------------------------------------------------------------------------------
# Definitions.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Definitions:
    """The Feast objects of feature_repo/definitions.py, for one data directory."""

    module: ModuleType
    entities: list[Entity] = field(default_factory=list)
    views: list[FeatureView] = field(default_factory=list)
    services: list[FeatureService] = field(default_factory=list)
    digest: str = ""  # of the specs as declared: `apply` fills in inferred fields in place

    @property
    def objects(self) -> list[Any]:
        return [*self.entities, *self.views, *self.services]


def load_definitions(data_dir: Path, feature_repo: Path) -> Definitions:
    """Execute feature_repo/definitions.py as a fresh module with its sources under data_dir."""
    from feast import Entity, FeatureService, FeatureView

    path = Path(feature_repo) / DEFINITIONS
    if not path.exists():
        raise ConfigError(f"{path}: no Feast definitions there (RECSVC_FEATURE_REPO?)")
    spec = importlib.util.spec_from_file_location(f"recsvc_feature_repo_{uuid.uuid4().hex}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    module.DATA_DIR = Path(data_dir).resolve()  # type: ignore[attr-defined]  # read by the file
    spec.loader.exec_module(module)
    values = list(vars(module).values())
    entities = [v for v in values if isinstance(v, Entity)]
    views = [v for v in values if isinstance(v, FeatureView)]
    services = [v for v in values if isinstance(v, FeatureService)]
    return Definitions(module, entities, views, services,
                       digest=specs_digest([*entities, *views, *services]))


def _strip_meta(msg: Any) -> Any:
    """Clear every nested `meta` (Feast's created/updated timestamps) of a protobuf message."""
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        if fd.name == "meta":
            msg.ClearField(fd.name)
        elif hasattr(value, "ListFields"):
            _strip_meta(value)
        else:  # a repeated field or a map of messages
            for item in value.values() if hasattr(value, "values") else value:
                if hasattr(item, "ListFields"):
                    _strip_meta(item)
    return msg


def specs_digest(objects: Sequence[Any]) -> str:
    """A digest of what Feast objects declare (their specs, without Feast's timestamps)."""
    h = hashlib.sha256()
    for obj in sorted(objects, key=lambda o: (type(o).__name__, o.name)):
        spec = _strip_meta(obj.to_proto().spec)
        h.update(type(obj).__name__.encode() + b"\0" + spec.SerializeToString(deterministic=True))
    return h.hexdigest()[:16]


def apply_definitions(store: FeatureStore, defs: Definitions) -> bool:
    """Register the definitions unless the registry holds them already; True if it applied.

    Feast's own `plan` reports every file source as updated on each run (their embedded
    timestamps differ), so the check is a digest of the declared specs, recorded next to
    the registry, plus the presence of every object in the registry.
    """
    registry = str(store.config.registry.path)
    # the record sits next to a local registry file; a shared registry is always applied to
    record = None if "://" in registry else Path(registry).with_suffix(".applied.json")
    digest = defs.digest
    with feast_errors("read the feature registry"):
        try:
            applied = json.loads(record.read_text(encoding="utf-8")) if record else {}
        except (OSError, ValueError):
            applied = {}
        if applied.get(store.project) == digest:
            listed: list[Any] = [*store.list_entities(), *store.list_feature_views(),
                                 *store.list_feature_services()]
            present = {o.name for o in listed}
            if {o.name for o in defs.objects} <= present:
                return False
    with feast_errors("apply the feature definitions"):
        store.apply(defs.objects)
    if record is not None:
        applied[store.project] = digest
        record.write_text(json.dumps(applied, indent=2, sort_keys=True), encoding="utf-8")
    return True


# --------------------------------------------------------------------------------------------
# Retrieval by feature service: the one way training and serving read features.
# --------------------------------------------------------------------------------------------
# Every service is read with Feast's full names, "<view>__<feature>" (e.g.
# "member_points__points_balance"), so a column always says which view it comes from. Feature
# names are also unique across views; recsvc.ml.inputs relies on that.
FULL_FEATURE_NAMES = True


def feature_names(store: FeatureStore, service: str) -> list[str]:
    """The columns a service yields, in its declared order ("<view>__<feature>")."""
    with feast_errors(f"look up feature service {service!r}"):
        fs = store.get_feature_service(service, allow_cache=True)
    return [f"{p.name_to_use()}__{f.name}" for p in fs.feature_view_projections
            for f in p.features]


def online_features(store: FeatureStore, service: str,
                    entity_rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Online values of a feature service for entity rows, as {column: [value per row]}."""
    with feast_errors(f"read {service!r} online"):
        fs = store.get_feature_service(service, allow_cache=True)
        response = store.get_online_features(features=fs, entity_rows=list(entity_rows),
                                             full_feature_names=FULL_FEATURE_NAMES)
        return dict(response.to_dict())


def historical_features(store: FeatureStore, service: str, entity_df: Any) -> Any:
    """Point-in-time training rows: entity_df (join keys + event_timestamp) with the features
    each row's instant could see (the latest snapshot at or before it, within the ttl)."""
    with feast_errors(f"read {service!r} history"):
        fs = store.get_feature_service(service, allow_cache=True)
        job = store.get_historical_features(entity_df=entity_df, features=fs,
                                            full_feature_names=FULL_FEATURE_NAMES)
        return job.to_df()
