"""`recsvc features`: tables (simulated if absent) -> dated snapshots -> Feast registry -> online.

Every step is idempotent and skips itself when its output is current: the snapshots carry a
fingerprint of the tables and options, the registry a digest of the definitions, and the
online store the fingerprint it was filled from (next to the registry, per store kind and
project). A second run therefore reads a few small files and says that nothing was due.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsvc.cliargs import date_arg, end_of_day, positive_int
from recsvc.config import Programme, load_programme
from recsvc.engine import LOCAL, Engine, add_engine_args, open_engine
from recsvc.errors import ConfigError, DataMissing
from recsvc.settings import Settings, load_settings

# the population simulated into an empty data directory: 18 months, the span of the real retail
# logs recsvc is judged on, so the churn model has monthly cut-offs to learn from
DEFAULT_MEMBERS = 20_000
DEFAULT_DAYS = 540
DEFAULT_SEED = 7
MEMBERS_ENV = "RECSVC_SIM_MEMBERS"
MAX_SNAPSHOT_EVERY_DAYS = 14  # the member views' ttl (28 days) must cover two periods


@dataclass
class FeaturesRun:
    """What one run did, step by step (for callers and tests)."""

    simulated: bool = False
    computed: bool = False
    applied: bool = False
    materialized_rows: int = 0
    online_mode: str = ""  # "incremental", "full" or "rewrite"
    as_of: dt.datetime | None = None
    lines: list[str] = field(default_factory=list)


def _stamp(settings: Settings, fingerprint: str) -> str:
    """Everything the registry and the online store were filled from, hashed."""
    from recsvc.adapters import feast as store

    h = hashlib.sha256(fingerprint.encode())
    h.update(json.dumps(store.repo_config_dict(settings), sort_keys=True, default=str).encode())
    h.update((Path(settings.feature_repo) / store.DEFINITIONS).read_bytes())
    return h.hexdigest()[:16]


def _online_target(settings: Settings) -> str:
    """Which online store (server or file) the settings fill, hashed (it may hold a password)."""
    from recsvc.adapters import feast as store

    online = store.repo_config_dict(settings)["online_store"]
    return hashlib.sha256(json.dumps(online, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def run_features(
    settings: Settings,
    programme: Programme,
    *,
    as_of: dt.date | None = None,
    members: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    snapshot_every_days: int = 7,
    force: bool = False,
    engine: Engine = LOCAL,
    say: Callable[[str], None] = print,
) -> FeaturesRun:
    """Run the whole job for `settings` (data dir, project, online store).

    `members`, `days` and `seed` size the population simulated when there are no tables
    (default DEFAULT_MEMBERS x DEFAULT_DAYS, seed DEFAULT_SEED); given while there are simulated
    tables of another size, they are refused (provenance.PopulationMismatch), never ignored.
    On a distributed `engine`, the members' snapshots are computed and a Redis online store
    filled by ranges of ids on its workers.
    """
    from recsvc.adapters import feast as store
    from recsvc.adapters import materialise, online_write
    from recsvc.data import provenance, schema
    from recsvc.offline import compute, snapshots
    from recsvc.progress import Stopwatch

    run = FeaturesRun()

    def tell(line: str) -> None:
        run.lines.append(line)
        say(line)

    if not 0 < snapshot_every_days <= MAX_SNAPSHOT_EVERY_DAYS:
        raise ConfigError(
            f"--snapshot-every-days: must be within 1..{MAX_SNAPSHOT_EVERY_DAYS} (the member "
            f"views' ttl must cover two snapshot periods), got {snapshot_every_days}")
    data_dir = Path(settings.data_dir)
    kind = store.online_kind(settings)

    # 1. Canonical tables: simulate a default population when there are none.
    if schema.has_tables(data_dir):
        tell(provenance.check_population(data_dir, provenance.Size(members, days, seed)))
    elif not settings.simulate_when_empty:
        raise DataMissing(f"no tables under {schema.tables_dir(data_dir)}: import them with "
                          "`recsvc import-transactions` (RECSVC_SIMULATE_WHEN_EMPTY is off)")
    else:
        from recsvc.offline.simulate import run_simulation

        members = members if members is not None else DEFAULT_MEMBERS
        days = days if days is not None else DEFAULT_DAYS
        seed = seed if seed is not None else DEFAULT_SEED
        tell(f"tables: none under {schema.tables_dir(data_dir)}; simulating {members:,} members"
             f" x {days} days (seed {seed})")
        summary = run_simulation(data_dir, members=members, days=days, seed=seed,
                                 programme=programme)
        rows = summary.rows if isinstance(summary.rows, int) else sum(summary.rows.values())
        tell(f"tables: simulated {rows:,} rows in {summary.seconds:.1f} s "
             f"({rows / max(summary.seconds, 1e-9):,.0f} rows/s)")
        run.simulated = True

    # 2. Dated snapshots (the offline store).
    as_of_instant = end_of_day(as_of) if as_of else None
    build = snapshots.build_features(data_dir, programme, as_of=as_of_instant,
                                   snapshot_every_days=snapshot_every_days, force=force,
                                   engine=engine)
    run.as_of = build.as_of
    if build.computed:
        tell(f"features: {build.total_rows:,} snapshot rows from {build.input_rows:,} table rows "
             f"in {build.seconds:.1f} s ({build.input_rows / max(build.seconds, 1e-9):,.0f} "
             f"table rows/s, {build.total_rows / max(build.seconds, 1e-9):,.0f} snapshot rows/s)"
             f", as of {build.as_of:%Y-%m-%d %H:%M} UTC")
        for view, n in build.rows.items():
            tell(f"  {view:16s} {n:>12,}")
        run.computed = True
    else:
        tell(f"features: up to date with the tables (fingerprint {build.fingerprint}, as of "
             f"{build.as_of:%Y-%m-%d %H:%M} UTC): skipped")

    # Nothing changed since the last complete run: say so without importing Feast (4 s).
    registry = store.registry_path(settings)
    filled_path = registry.with_suffix(".online.json")
    filled = _read_json(filled_path)
    last = filled.get(settings.feast_project) or {}
    stamp = _stamp(settings, build.fingerprint)
    # the record above says what was filled; the mark in the store says it still holds it
    lost = bool(last) and materialise.read_fill_mark(settings) != last.get("stamp")
    if lost:
        tell(f"online ({kind}): the store does not hold the mark of the last fill (restarted "
             "empty, emptied, or filled by a recsvc without marks): filling it again")
    if (not (force or build.computed or lost) and last.get("stamp") == stamp
            and registry.exists()):
        tell(f"definitions: unchanged in project {settings.feast_project!r} ({registry})")
        tell(f"online ({kind}): up to date as of {build.as_of:%Y-%m-%d %H:%M} UTC: nothing to do")
        run.online_mode = "none"
        return run

    # 3. Definitions into the registry.
    watch = Stopwatch()
    feast_store = store.open_store(settings)
    defs = store.load_definitions(data_dir, settings.feature_repo)
    if store.apply_definitions(feast_store, defs):
        tell(f"definitions: applied {len(defs.entities)} entities, {len(defs.views)} views, "
             f"{len(defs.services)} services to project {settings.feast_project!r} "
             f"({registry}) in {watch.seconds:.1f} s")
        run.applied = True
    else:
        tell(f"definitions: unchanged in project {settings.feast_project!r} ({registry})")

    # 4. The online store.
    target = _online_target(settings)
    if force or lost or not last or last.get("target") != target:
        mode = "rewrite"  # first fill, another server/file than last time, or rows lost
    elif last.get("fingerprint") == build.fingerprint:
        mode = "incremental"
    elif dt.datetime.fromisoformat(last["as_of"]) < build.as_of:
        mode = "full"  # newer timestamps overwrite in every store
    else:
        mode = "rewrite"  # same or older instants: Redis would keep what it has
    run.online_mode = mode
    watch = Stopwatch()
    if mode == "rewrite":
        online_write.clear_online(feast_store, list(compute.VIEWS))
    # the computed views only: batch scores are materialised by the scoring job
    results = materialise.materialize(feast_store, build.as_of, list(compute.VIEWS),
                                      full=mode != "incremental", cleared=mode == "rewrite",
                                      engine=engine, settings=settings, say=tell)
    rows = sum(r.rows for r in results)
    run.materialized_rows = rows
    if all(r.skipped for r in results):
        tell(f"online ({kind}): up to date as of {build.as_of:%Y-%m-%d %H:%M} UTC: nothing to do")
    else:
        tell(f"online ({kind}, {mode}): {rows:,} rows up to {build.as_of:%Y-%m-%d %H:%M} UTC in "
             f"{watch.seconds:.1f} s ({rows / max(watch.seconds, 1e-9):,.0f} rows/s)")
        for r in results:
            if not r.skipped:
                tell(f"  {r.view:16s} {r.rows:>10,} rows in {r.seconds:5.1f} s")
    materialise.write_fill_mark(settings, stamp)
    filled[settings.feast_project] = {"fingerprint": build.fingerprint, "target": target,
                                      "as_of": build.as_of.isoformat(), "stamp": stamp}
    filled_path.write_text(json.dumps(filled, indent=2, sort_keys=True), encoding="utf-8")
    return run


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser(
        "features",
        help="compute feature snapshots, register them with Feast and fill the online store",
        description=(
            "Build the feature platform from the canonical tables: simulate a default "
            "population first when DATA_DIR has no tables (a size given while there are "
            "simulated tables of another size is refused, with how to start again), compute "
            "dated snapshots of the feature views into DATA_DIR/features (Feast's Parquet "
            "offline store), apply the definitions of feature_repo/ to the registry and "
            "materialise the latest snapshot of every member and item into the online store "
            "(SQLite, or Redis when RECSVC_REDIS_URL is set). Each step is skipped when its "
            "output is up to date. With --engine dask, the members' snapshots are computed "
            "and a Redis online store filled by ranges of ids on the Dask workers, in "
            "parallel."
        ),
    )
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data directory (default $RECSVC_DATA_DIR or ./data)")
    p.add_argument("--as-of", type=date_arg, default=None, metavar="DATE",
                   help="features as of the end of this UTC day, YYYY-MM-DD (default: the end "
                        "of the day of the latest event in the tables)")
    p.add_argument("--members", type=positive_int, default=None,
                   help=f"members to simulate when there are no tables (default "
                        f"${MEMBERS_ENV} or {DEFAULT_MEMBERS}); refused when the simulated "
                        "tables have another number")
    p.add_argument("--days", type=positive_int, default=None,
                   help=f"days to simulate when there are no tables (default {DEFAULT_DAYS}); "
                        "refused when the simulated tables span another number")
    p.add_argument("--seed", type=int, default=None,
                   help=f"simulation seed (default {DEFAULT_SEED}); refused when the simulated "
                        "tables recorded another")
    p.add_argument("--snapshot-every-days", type=positive_int, default=7,
                   help="a member snapshot at least this often, in days (default 7)")
    p.add_argument("--force", action="store_true",
                   help="recompute the snapshots and rewrite the online store")
    add_engine_args(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    settings = load_settings(data_dir=args.data_dir)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("feast").setLevel(logging.WARNING)  # a line per registry refresh
    programme = load_programme(settings.programme)
    members = args.members if args.members is not None else settings.sim_members
    with open_engine(args.engine, args.scheduler, args.workers) as engine:
        run_features(settings, programme, as_of=args.as_of, members=members, days=args.days,
                     seed=args.seed, snapshot_every_days=args.snapshot_every_days,
                     force=args.force, engine=engine)
    return 0
