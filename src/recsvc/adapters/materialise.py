"""Materialisation: every view's latest snapshot rows written into the online store
(`online_write`: by Feast's own writer or, on Redis, by recsvc's, the same bytes); by ranges of
entity ids on an engine's workers; a fill mark recording what the store was last filled
from."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from recsvc.adapters.feast import feast_errors, open_store, repo_config_dict
from recsvc.adapters.online_write import write_online
from recsvc.engine import LOCAL, Engine, id_ranges, worker_held
from recsvc.errors import ConfigError, DataMissing
from recsvc.progress import Stopwatch, progress
from recsvc.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore, FeatureView

    from recsvc.adapters.online_plan import ViewSpec

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Materialisation.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewMaterialization:
    view: str
    start: dt.datetime
    end: dt.datetime
    rows: int
    seconds: float
    skipped: bool


def _latest_per_entity(table: pa.Table, key: str, ts: str) -> pa.Table:
    """The newest row of each entity (the last one after sorting by entity, then time)."""
    if table.num_rows == 0:
        return table
    # sorted by the two columns alone, then only the kept rows taken: taking every row of
    # every column (strings among them) first cost most of the time
    order = pc.sort_indices(table.select([key, ts]),
                            sort_keys=[(key, "ascending"), (ts, "ascending")])
    keys = table[key].take(order).to_numpy()
    last = np.flatnonzero(np.r_[keys[1:] != keys[:-1], True])
    return table.take(order.take(pa.array(last)))


def snapshot_rows(store: FeatureStore, view: FeatureView, start: dt.datetime,
                  end: dt.datetime, within: tuple[int, int] | None = None) -> pa.Table:
    """Latest offline row per entity with start <= ts <= end (Feast's own window); given
    `within` = [low, high), only the entities whose id is in it (one partition)."""
    uri, ts_col = _source(store, view)
    keys = [e.name for e in view.entity_columns]
    columns = [*keys, ts_col, *(f.name for f in view.features)]
    # strings (tiers, bands, categories: a few distinct values) read as dictionaries: most
    # of a string view's read was making millions of string objects for the rows not kept
    strings = [f.name for f in view.features if f.dtype.to_value_type().name == "STRING"]
    data = ds.dataset(uri, format=ds.ParquetFileFormat(
        read_options=ds.ParquetReadOptions(dictionary_columns=strings)))
    window = _window(ts_col, start, end)
    if within is not None:
        window &= (pc.field(keys[0]) >= within[0]) & (pc.field(keys[0]) < within[1])
    table = data.to_table(columns=columns, filter=window)
    return _latest_per_entity(table, keys[0], ts_col)


def features_at(store: FeatureStore, service: str, frame: pd.DataFrame,
                as_of: dt.datetime) -> pd.DataFrame:
    """Feast's point-in-time join (`feast.historical_features`) for entity rows that all ask
    for the one instant `as_of` (a batch scoring's), read as materialisation reads: for each
    view of the service, the newest snapshot of each entity in [as_of - ttl, as_of] (no lower
    bound without a ttl), from the Parquet files and only the rows' id range, joined to the
    rows; "<view>__<feature>" columns after the frame's own, None where a view has no row.
    Feast's join builds per-row windows for a general entity frame (~100 µs a member in
    score-batch); here every row shares one window, so it is one filtered scan a view."""
    import pandas as pd

    with feast_errors(f"read {service!r} at {as_of:%Y-%m-%d}"):
        fs = store.get_feature_service(service, allow_cache=True)
        views = [(p, store.get_feature_view(p.name)) for p in fs.feature_view_projections]
    out = frame.reset_index(drop=True)
    columns: dict[str, Any] = {}
    for projection, view in views:
        key = view.entity_columns[0].name
        ids = out[key].to_numpy()
        start = as_of - view.ttl if view.ttl else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        within = (int(ids.min()), int(ids.max()) + 1) if len(ids) else (0, 0)
        latest = snapshot_rows(store, view, start, as_of, within)
        at = pd.Index(latest[key].to_numpy()).get_indexer(ids)
        rows = latest.take(pa.array(at, mask=at < 0))
        for f in projection.features:
            column = rows[f.name]
            if pa.types.is_dictionary(column.type):  # read as dictionaries: plain values out
                column = column.cast(column.type.value_type)
            columns[f"{projection.name_to_use()}__{f.name}"] = column.to_pandas()
    return pd.concat([out, pd.DataFrame(columns)], axis=1)


def _window(ts_col: str, start: dt.datetime, end: dt.datetime) -> pc.Expression:
    ts, stamp = pc.field(ts_col), pa.timestamp("us", tz="UTC")
    return (ts >= pa.scalar(start, type=stamp)) & (ts <= pa.scalar(end, type=stamp))


def _source(store: FeatureStore, view: FeatureView) -> tuple[str, str]:
    """The directory of a view's Parquet snapshots, and their timestamp column."""
    from feast.infra.offline_stores.file_source import FileSource

    source = view.batch_source
    if not isinstance(source, FileSource):
        raise ConfigError(f"{view.name}: recsvc materialises only Parquet (file) sources")
    uri = FileSource.get_uri_for_file_path(store.config.repo_path, source.path)
    uri = uri.removesuffix("/*.parquet")  # the directory behind the DuckDB store's glob
    if not Path(uri).exists():
        raise DataMissing(f"{view.name}: no offline snapshots at {uri} (run `recsvc features`)")
    return str(uri), source.timestamp_field


def entity_range(store: FeatureStore, view: FeatureView, start: dt.datetime,
                 end: dt.datetime) -> tuple[int, int] | None:
    """The lowest and highest entity id with a snapshot in [start, end], or None (no rows)."""
    key = view.entity_columns[0].name
    uri, ts_col = _source(store, view)
    ids = ds.dataset(uri, format="parquet").to_table(
        columns=[key], filter=_window(ts_col, start, end))[key]
    if len(ids) == 0:
        return None
    bounds = pc.min_max(ids)
    return int(bounds["min"].as_py()), int(bounds["max"].as_py())


def materialize(
    store: FeatureStore,
    end: dt.datetime,
    views: Sequence[str] | None = None,
    *,
    full: bool = False,
    cleared: bool = False,
    engine: Engine = LOCAL,
    settings: Settings | None = None,
    say: Callable[[str], Any] = log.info,
) -> list[ViewMaterialization]:
    """Bring the online store up to `end`, view by view, and record it in the registry.

    Incremental: rows stamped after the view's last materialised end (or, the first time or
    with `full`, after end - ttl), newest per entity. Intervals go to the registry exactly as
    Feast's `materialize_incremental` records them, so either can continue the other.

    On a distributed `engine` (with the `settings` the store was opened from) and a Redis
    online store, each view is read and written by ranges of entity ids, one worker each,
    in parallel; the interval is recorded once every range is written. SQLite takes one
    writer at a time, so there the rows are written here, as with the local engine.

    `cleared`: the caller has just deleted these views' online rows (`clear_online`: a first
    fill, a rewrite), so the Redis writer need not read the stored event times first.
    """
    if engine.distributed and settings is None:
        raise ConfigError("materialising on a distributed engine needs the store's settings")
    parts_on = engine if engine.distributed and _online_type(store) == "redis" else None
    if engine.distributed and parts_on is None:
        say("materialise: the SQLite online store takes one writer: written by this process")
    results: dict[str, ViewMaterialization] = {}
    todo: list[tuple[FeatureView, dt.datetime]] = []
    with feast_errors("materialise features"):
        names = list(views) if views else [v.name for v in store.list_feature_views()]
        specs = _online_specs(store)
        for name in names:
            view = store.get_feature_view(name, allow_registry_cache=False)
            start = view.most_recent_end_time
            if full or start is None:
                start = end - (view.ttl or dt.timedelta(0))
            if start >= end:
                results[name] = ViewMaterialization(name, start, end, 0, 0.0, True)
            else:
                todo.append((view, start))
        if parts_on is not None and todo:
            assert settings is not None
            watch = Stopwatch()
            written = _materialize_parts(parts_on, settings, store, todo, end, specs, cleared)
            for view, start in todo:  # written together: each view is given the job's time
                store.registry.apply_materialization(view, store.project, start, end,
                                                     commit=True)
                results[view.name] = ViewMaterialization(view.name, start, end,
                                                         written[view.name], watch.seconds, False)
        else:
            for (view, start), table, watch in _read_ahead(store, todo, end):
                with progress(f"materialise {view.name}", table.num_rows) as bar:
                    write_online(store, view, table, bar.update, specs.get(view.name),
                                 cleared=cleared)
                store.registry.apply_materialization(view, store.project, start, end,
                                                     commit=True)
                results[view.name] = ViewMaterialization(view.name, start, end, table.num_rows,
                                                         watch.seconds, False)
    return [results[name] for name in names]


def _read_ahead(store: FeatureStore, todo: Sequence[tuple[FeatureView, dt.datetime]],
                end: dt.datetime) -> Iterator[tuple[tuple[FeatureView, dt.datetime], pa.Table,
                                                    Stopwatch]]:
    """Each view with its rows to write (and a stopwatch started when it was asked for), the
    next view's rows read by a second thread meanwhile: Arrow reads and sorts without the
    GIL, so the read of one view overlaps the writing of the one before (one view ahead: the
    tables of two views at most in memory)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsvc-snapshot-read") as reader:
        def read(k: int) -> Future[pa.Table] | None:
            return reader.submit(snapshot_rows, store, todo[k][0], todo[k][1], end) \
                if k < len(todo) else None

        upcoming = read(0)
        for k, job in enumerate(todo):
            watch = Stopwatch()
            assert upcoming is not None
            table = upcoming.result()
            upcoming = read(k + 1)
            yield job, table, watch


def _online_type(store: FeatureStore) -> str:
    return str(getattr(store.config.online_store, "type", "sqlite"))


def _online_specs(store: FeatureStore) -> dict[str, ViewSpec]:
    """The online views as the Redis writer needs them, read from the registry once for a
    whole materialisation (a read costs ~50 ms); none for other stores."""
    from recsvc.adapters.online import registry_specs

    return registry_specs(store)[0] if _online_type(store) == "redis" else {}


def _materialize_parts(engine: Engine, settings: Settings, store: FeatureStore,
                       todo: Sequence[tuple[FeatureView, dt.datetime]], end: dt.datetime,
                       specs: dict[str, ViewSpec], cleared: bool = False) -> dict[str, int]:
    """Views by ranges of entity ids on the engine's workers, all views' ranges in one go
    (a view's ranges alone would leave workers idle at its end); rows written per view."""
    job = uuid.uuid4().hex  # tells a worker to read the registry again
    parts = []
    for view, start in todo:
        bounds = entity_range(store, view, start, end)
        if bounds is not None:
            parts += [MaterializePart(view.name, start, end, ids, specs.get(view.name), job,
                                      cleared)
                      for ids in id_ranges(bounds[0], bounds[1] + 1, engine.workers)]
    written = dict.fromkeys((view.name for view, _ in todo), 0)
    with progress("materialise", sum(p.ids[1] - p.ids[0] for p in parts), unit="ids") as bar:
        for part, rows in zip(parts, engine.map(
                materialize_part, parts, settings=settings,
                on_done=lambda rows_ids: bar.update(rows_ids[1])), strict=True):
            written[part.view] += rows[0]
    return written


@dataclass(frozen=True)
class MaterializePart:
    """One range of entity ids [low, high) of one view, for a worker to materialise."""

    view: str
    start: dt.datetime
    end: dt.datetime
    ids: tuple[int, int]
    spec: ViewSpec | None  # as the registry describes the view to the Redis writer
    job: str
    cleared: bool = False  # the view's online rows were just deleted


def materialize_part(part: MaterializePart, *, settings: Settings) -> tuple[int, int]:
    """A worker's share of a materialisation: the latest row of each entity with an id in
    the part's range, read from the offline snapshots and written to the online store.
    Returns (rows written, ids covered)."""
    store = worker_store(settings, part.job)
    with feast_errors("materialise features"):
        view = store.get_feature_view(part.view, allow_registry_cache=True)
        table = snapshot_rows(store, view, part.start, part.end, part.ids)
        write_online(store, view, table, spec=part.spec, cleared=part.cleared)
    return table.num_rows, part.ids[1] - part.ids[0]


def worker_store(settings: Settings, job: str) -> FeatureStore:
    """The feature store a worker process keeps for these settings, its registry read again
    when a new job (`job`: the caller's token) starts."""
    return worker_held("feature store", settings, job, lambda: open_store(settings),
                       renew=_refreshed)


def _refreshed(store: FeatureStore) -> FeatureStore:
    with feast_errors("read the feature registry"):
        store.refresh_registry()
    return store


FILL_MARK_KEY = "recsvc:online-filled:"
FILL_MARK_TABLE = "recsvc_online_filled"


def read_fill_mark(settings: Settings) -> str | None:
    """The stamp the last complete fill of this project wrote into the online store itself,
    or None: never filled, or the store lost what it held (a Redis restarted empty, an
    online file deleted). A record beside the data cannot tell; a mark inside the store
    goes with the rows. Redis or the SQLite file, read without Feast."""
    online = repo_config_dict(settings, offline=False)["online_store"]
    if online.get("type") == "redis":
        with _mark_client(settings, online) as client:
            value = client.get(FILL_MARK_KEY + settings.feast_project)
        return value.decode() if value is not None else None
    path = Path(online.get("path", ""))
    if online.get("type") != "sqlite" or not path.is_file():
        return None
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        try:
            row = conn.execute(f"SELECT stamp FROM {FILL_MARK_TABLE} WHERE project = ?",
                               (settings.feast_project,)).fetchone()
        except sqlite3.OperationalError:  # no such table: never marked
            return None
    return str(row[0]) if row else None


def write_fill_mark(settings: Settings, stamp: str) -> None:
    """Mark the online store as filled up to `stamp` (after a complete fill)."""
    online = repo_config_dict(settings, offline=False)["online_store"]
    if online.get("type") == "redis":
        with _mark_client(settings, online) as client:
            client.set(FILL_MARK_KEY + settings.feast_project, stamp)
        return
    with contextlib.closing(sqlite3.connect(online["path"], timeout=30)) as conn, conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {FILL_MARK_TABLE} "
                     "(project TEXT PRIMARY KEY, stamp TEXT NOT NULL)")
        conn.execute(f"INSERT OR REPLACE INTO {FILL_MARK_TABLE} VALUES (?, ?)",
                     (settings.feast_project, stamp))


@contextmanager
def _mark_client(settings: Settings, online: dict[str, Any]) -> Iterator[Any]:
    import redis

    url = settings.redis_url or ""
    if online.get("redis_type") == "redis_cluster":
        from redis.cluster import RedisCluster

        client: Any = RedisCluster.from_url(url, socket_timeout=10)
    else:
        client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()
