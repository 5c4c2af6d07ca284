"""The feature job's run: the instants a snapshot set spans, the computation in memory
(`compute_features`) or by ranges of members and items on an engine (`snapshot_part`),
written as Feast's Parquet offline store with a manifest and a fingerprint of what it was made
from (`build_features`). The views' values are `recsvc.offline.compute`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsvc.config import Programme
from recsvc.core.ledger import DAY_US, US, instant
from recsvc.data import schema
from recsvc.data.columns import as_i64
from recsvc.engine import LOCAL, Engine, id_ranges
from recsvc.errors import DataMissing
from recsvc.offline.compute import (
    ENTITY_KEY,
    I64,
    INPUT_COLUMNS,
    TIMESTAMP_FIELD,
    VIEWS,
    MemberInputs,
    day_end,
    features_dir,
    member_chunk,
    member_inputs,
    top_categories,
)
from recsvc.offline.item_views import item_tables
from recsvc.progress import Stopwatch, progress

PART_ROWS = 200_000  # rows per offline-store file
# members whose views one range computes: their events are what a process holds at once
PART_MEMBERS = 100_000
PART_ITEMS = 25_000  # items whose views one range computes (a row per item and day)
# Bump when a feature's definition changes: it is part of the fingerprint, so old snapshots
# are recomputed rather than served under a new meaning.
FEATURES_VERSION = 7
MANIFEST = "_manifest.json"
EVENT_TABLES = ("orders", "ledger", "redemptions", "exposures")
MEMBER_INPUTS = ("members", "orders", "ledger", "redemptions", "exposures")
# What a range of items reads: the items' own inputs and their events' instants
ITEM_INPUTS: dict[str, list[str]] = {
    "items": INPUT_COLUMNS["items"],
    "item_days": INPUT_COLUMNS["item_days"],
    "redemptions": ["item_id", "ts"],
    "exposures": ["item_id", "ts"],
}
MEMBER_VIEWS = ("member_activity", "member_points", "member_expiry")
ITEM_VIEWS = ("item_catalogue", "item_stats")
SNAPSHOT_EVERY_DAYS = 7


def view_dir(data_dir: Path, view: str) -> Path:
    return features_dir(data_dir) / view


def event_span(tables: Mapping[str, pa.Table]) -> tuple[int, int] | None:
    """(earliest, latest) event instant in microseconds over the event tables, or None."""
    return _extent(tables[name]["ts"] for name in EVENT_TABLES)


def _extent(columns: Iterable[pa.Array | pa.ChunkedArray]) -> tuple[int, int] | None:
    """(lowest, highest) instant in microseconds over the columns' values, or None."""
    lows, highs = [], []
    for col in columns:
        if len(col) - col.null_count:
            mm = pc.min_max(col.cast(pa.int64()))
            lows.append(mm["min"].as_py())
            highs.append(mm["max"].as_py())
    return (min(lows), max(highs)) if lows else None


@dataclass(frozen=True)
class Span:
    history_start: int  # µs; the first snapshot instant anything may have
    as_of: int  # µs; the last snapshot instant

    @property
    def as_of_dt(self) -> dt.datetime:
        return instant(self.as_of)

    @property
    def history_start_dt(self) -> dt.datetime:
        return instant(self.history_start)


def snapshot_span(tables: Mapping[str, pa.Table], as_of: dt.datetime | None = None) -> Span:
    return span_of(event_span(tables), as_of)


def span_of(span: tuple[int, int] | None, as_of: dt.datetime | None = None) -> Span:
    """The snapshots' span for events spanning `span` (`event_span`), up to `as_of`."""
    if span is None:
        raise DataMissing("the canonical tables hold no events: nothing to compute features from")
    history_start = int(day_end(np.array([span[0]]))[0])
    if as_of is None:
        end = int(day_end(np.array([span[1]]))[0])
    else:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware (UTC)")
        end = int(as_of.timestamp() * US)
        if end % DAY_US:
            raise ValueError(f"as_of must be a UTC midnight (the end of a day), got {as_of}")
    return Span(history_start=min(history_start, end), as_of=end)


def iter_feature_parts(
    tables: Mapping[str, pa.Table],
    programme: Programme,
    *,
    as_of: dt.datetime | None = None,
    snapshot_every_days: int = SNAPSHOT_EVERY_DAYS,
    chunk_members: int = 20_000,
    on_members: Any = None,
) -> Iterator[tuple[str, pa.Table]]:
    """Yield (view, table part) pairs: items first, then members chunk by chunk."""
    if snapshot_every_days <= 0:
        raise ValueError("snapshot_every_days must be positive")
    span = snapshot_span(tables, as_of)
    catalogue, stats = item_tables(tables, span.history_start, span.as_of)
    yield "item_catalogue", catalogue
    yield "item_stats", stats
    yield from _member_parts(member_inputs(tables, span.history_start, span.as_of), programme,
                             span, snapshot_every_days, chunk_members, on_members)


def _member_parts(inp: MemberInputs, programme: Programme, span: Span,
                  snapshot_every_days: int, chunk_members: int,
                  on_members: Any = None) -> Iterator[tuple[str, pa.Table]]:
    n = len(inp.ids)
    for a in range(0, n, chunk_members):
        b = min(a + chunk_members, n)
        activity, points, expiry = member_chunk(inp, a, b, programme, span.history_start,
                                                 span.as_of, snapshot_every_days)
        yield "member_activity", activity
        yield "member_points", points
        yield "member_expiry", expiry
        if on_members is not None:
            on_members(b - a)


def compute_features(tables: Mapping[str, pa.Table], programme: Programme,
                     **kwargs: Any) -> dict[str, pa.Table]:
    """All the views in memory (for tests and small data): {view: table}."""
    parts: dict[str, list[pa.Table]] = {v: [] for v in VIEWS}
    for view, part in iter_feature_parts(tables, programme, **kwargs):
        parts[view].append(part)
    return {v: pa.concat_tables(p) if p else VIEWS[v].empty_table() for v, p in parts.items()}


def read_inputs(data_dir: Path, columns: Mapping[str, list[str]] = INPUT_COLUMNS,
                where: pc.Expression | None = None) -> dict[str, pa.Table]:
    return {name: schema.read_table(data_dir, name, cols, where) for name, cols in columns.items()}


def _write_view_part(out: schema.TableSetWriter, view: str, part: pa.Table) -> int:
    """One computed part of a view into the offline store; its rows."""
    # Files sorted by time and cut small let a reader of the latest days (the
    # materialisation window) skip the rest by the Parquet statistics on `ts`.
    by_time = part.sort_by([(TIMESTAMP_FIELD, "ascending"), (ENTITY_KEY[view], "ascending")])
    for offset in range(0, max(by_time.num_rows, 1), PART_ROWS):
        out.write(view, by_time.slice(offset, PART_ROWS))
    return int(by_time.num_rows)


@dataclass(frozen=True)
class InputSummary:
    """What the ranges of a snapshot build share, scanned from the tables a batch at a time."""

    span: tuple[int, int] | None  # the events' first and last instants (µs), None: no events
    categories: list[str]  # the vocabulary of the top-3 order categories (every order's)
    member_ids: I64  # ascending
    item_ids: I64  # ascending
    rows: int  # the input tables' rows


def summarise_inputs(data_dir: Path) -> InputSummary:
    """The tables' `InputSummary`, holding no more than a batch of rows of an event table."""
    rows = sum(schema.dataset(data_dir, name).count_rows() for name in INPUT_COLUMNS)
    return InputSummary(
        _extent(b.column(0) for name in EVENT_TABLES for b in _scan(data_dir, name, ["ts"])),
        top_categories(b.column(0) for b in _scan(data_dir, "orders", ["category"])),
        np.unique(as_i64(schema.read_table(data_dir, "members", ["member_id"])["member_id"])),
        np.unique(as_i64(schema.read_table(data_dir, "items", ["item_id"])["item_id"])), rows)


def _scan(data_dir: Path, name: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    return schema.dataset(data_dir, name).to_batches(columns=columns)


def _ranges(ids: I64, parts: int) -> list[tuple[int, int]]:
    """[low, high) ranges of nearly equal width covering the ids (none for no ids)."""
    return id_ranges(int(ids[0]), int(ids[-1]) + 1, parts) if len(ids) else []


def snapshot_part(part: tuple[str, tuple[int, int]], *, data_dir: Path, programme: Programme,
                  span: Span, categories: list[str], snapshot_every_days: int,
                  chunk_members: int, staging: Path,
                  on_members: Callable[[int], Any] | None = None,
                  ) -> tuple[int, dict[str, tuple[int, int]]]:
    """One range of ids of the snapshot build: ("items", range) or ("members", range)."""
    kind, ids = part
    if kind == "items":
        return 0, item_snapshot_part(ids, data_dir=data_dir, span=span, staging=staging)
    return member_snapshot_part(ids, data_dir=data_dir, programme=programme, span=span,
                                categories=categories, snapshot_every_days=snapshot_every_days,
                                chunk_members=chunk_members, staging=staging,
                                on_members=on_members)


def item_snapshot_part(ids: tuple[int, int], *, data_dir: Path, span: Span,
                       staging: Path) -> dict[str, tuple[int, int]]:
    """The item views of the items with an id in [low, high): their rows of the items, item
    days, exposures and redemptions read here, their snapshots written into `staging` under a
    prefix of their own. Returns {view: (rows, files)}."""
    item = pc.field("item_id")
    tables = read_inputs(data_dir, ITEM_INPUTS, (item >= ids[0]) & (item < ids[1]))
    views = {v: VIEWS[v] for v in ITEM_VIEWS}
    out = schema.TableSetWriter(Path(staging), views, prefix=f"i{ids[0]:012d}-")
    written = {view: _write_view_part(out, view, table) for view, table in zip(
        ITEM_VIEWS, item_tables(tables, span.history_start, span.as_of), strict=True)}
    files = out.parts
    return {v: (written[v], files[v]) for v in views}


def member_snapshot_part(ids: tuple[int, int], *, data_dir: Path, programme: Programme,
                         span: Span, categories: list[str], snapshot_every_days: int,
                         chunk_members: int, staging: Path,
                         on_members: Callable[[int], Any] | None = None,
                         ) -> tuple[int, dict[str, tuple[int, int]]]:
    """One range of the member views: the members with an id in [low, high), their events
    read here, their snapshots written into `staging` under a prefix of their own (`on_members`
    after each chunk of members, for a caller's progress). Returns (members, {view: (rows,
    files)})."""
    member = pc.field("member_id")
    tables = read_inputs(data_dir, {name: INPUT_COLUMNS[name] for name in MEMBER_INPUTS},
                         (member >= ids[0]) & (member < ids[1]))
    inp = member_inputs(tables, span.history_start, span.as_of, categories)
    views = {v: VIEWS[v] for v in MEMBER_VIEWS}
    out = schema.TableSetWriter(Path(staging), views, prefix=f"m{ids[0]:012d}-")
    rows = dict.fromkeys(views, 0)
    for view, part in _member_parts(inp, programme, span, snapshot_every_days, chunk_members,
                                    on_members):
        rows[view] += _write_view_part(out, view, part)
    files = out.parts
    return len(inp.ids), {v: (rows[v], files[v]) for v in views}


def fingerprint(data_dir: Path, programme: Programme, *, as_of: dt.datetime | None,
                snapshot_every_days: int) -> str:
    """Changes whenever the tables, the options or the feature definitions change."""
    h = hashlib.sha256()
    root = schema.tables_dir(data_dir)
    if not schema.has_tables(data_dir):
        raise DataMissing(f"no canonical tables under {root}")
    for name in sorted(INPUT_COLUMNS):
        for part in sorted((root / name).glob("*.parquet")):
            st = part.stat()
            h.update(f"{name}/{part.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    options = {
        "version": FEATURES_VERSION,
        "as_of": as_of.isoformat() if as_of else None,
        "snapshot_every_days": snapshot_every_days,
        "tiers": programme.tiers.model_dump(mode="json"),
        "minor_per_unit": programme.currency.minor_per_unit,
    }
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()[:16]


def read_manifest(data_dir: Path) -> dict[str, Any] | None:
    path = features_dir(data_dir) / MANIFEST
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class FeatureBuild:
    """What `build_features` did: the snapshot rows per view and how long it took."""

    fingerprint: str
    as_of: dt.datetime
    rows: dict[str, int]
    input_rows: int
    seconds: float
    computed: bool  # False when the stored snapshots were already up to date

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def build_features(
    data_dir: Path,
    programme: Programme,
    *,
    as_of: dt.datetime | None = None,
    snapshot_every_days: int = SNAPSHOT_EVERY_DAYS,
    force: bool = False,
    chunk_members: int = 20_000,
    part_members: int = PART_MEMBERS,
    engine: Engine = LOCAL,
) -> FeatureBuild:
    """Compute the snapshots into `<data_dir>/features/`, unless they match the tables already.

    The view directories and the manifest are swapped in together (see
    `schema.atomic_tables`), so Feast never reads a half-written offline store. The views are
    computed by ranges of ids, the items' (at most PART_ITEMS items a range) and the members'
    (at most `part_members`, at least one range per worker of the engine), each range reading
    its own rows of the tables and writing its files into the same staging directory; this
    process only scans what spans them all (the events' first and last instants, the order
    categories, the ids) a batch at a time. So a process holds one range's events, whatever
    the population.
    """
    data_dir = Path(data_dir)
    fp = fingerprint(data_dir, programme, as_of=as_of, snapshot_every_days=snapshot_every_days)
    manifest = read_manifest(data_dir)
    if manifest and manifest.get("fingerprint") == fp and not force and all(
        view_dir(data_dir, v).exists() for v in VIEWS
    ):
        return FeatureBuild(fp, dt.datetime.fromisoformat(manifest["as_of"]),
                            dict(manifest["rows"]), int(manifest["input_rows"]), 0.0, False)

    watch = Stopwatch()
    summary = summarise_inputs(data_dir)
    span = span_of(summary.span, as_of)
    rows = dict.fromkeys(VIEWS, 0)
    members, items = summary.member_ids, summary.item_ids
    parts: list[tuple[str, tuple[int, int]]] = [
        *(("items", r) for r in _ranges(items, max(1, -(-len(items) // PART_ITEMS)))),
        *(("members", r) for r in _ranges(members, engine.parts(len(members), part_members)))]
    with schema.atomic_tables(features_dir(data_dir), VIEWS) as out, \
            progress("features: members", len(members), "members") as bar:
        done = engine.map(
            snapshot_part, parts,
            on_done=(lambda r: bar.update(r[0])) if engine.distributed else None,
            on_members=None if engine.distributed else bar.update,
            data_dir=data_dir, programme=programme, span=span,
            categories=summary.categories, snapshot_every_days=snapshot_every_days,
            chunk_members=chunk_members, staging=out.staging)
        for _, part_rows in done:
            for view, (n_rows, n_files) in part_rows.items():
                rows[view] += n_rows
                out.written_elsewhere(view, n_files)
        if not len(items):  # no item ranges: the item views still get their (empty) file
            for view in ITEM_VIEWS:
                _write_view_part(out, view, VIEWS[view].empty_table())
        input_rows = summary.rows
        record = {
            "fingerprint": fp,
            "as_of": span.as_of_dt.isoformat(),
            "history_start": span.history_start_dt.isoformat(),
            "snapshot_every_days": snapshot_every_days,
            "rows": rows,
            "input_rows": input_rows,
            "seconds": round(watch.seconds, 3),
        }
        (out.staging / MANIFEST).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return FeatureBuild(fp, span.as_of_dt, rows, input_rows, watch.seconds, True)
