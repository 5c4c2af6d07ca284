"""`recsvc nudges`: every member's due nudges as of a date, through the service's own path.

The answers are `Dataplane.nudges`, the code GetNudges runs, over the members as they were at
the as-of instant: their features and the catalogue come from Feast's point-in-time retrieval
at that instant (what the online store showed then, as `recsvc score-batch --as-of` scores),
"now" is the as-of instant (points lapse, caps count in its windows), and the propensity model
is one that saw nothing after it (production when it qualifies, else the newest registered one
that does, else the index ranks alone and the run says so). Caps are counted in the service's
own store (Redis or the SQLite file, as the settings say) unless --dry-run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsvc.adapters.feature_sources import AsOfSource
from recsvc.cliargs import date_arg, end_of_day
from recsvc.defaults import CHANNELS
from recsvc.engine import LOCAL, Engine, add_engine_args, open_engine, worker_held
from recsvc.errors import DataMissing
from recsvc.settings import load_settings

log = logging.getLogger(__name__)

OUT_DIR = "nudges"  # under the data directory: the CSVs of runs without --out
RPC = "nudges_batch"  # the label its degraded answers are counted under
COLUMNS = ("member_id", "kind", "points", "expires_at", "option_item_ids", "unlock_category",
           "spend_to_unlock_minor", "message")


@dataclass(frozen=True)
class NudgesRun:
    members: int
    rows: int
    capped: Counter[tuple[str, str]]
    degraded: Counter[str]
    seconds: float
    model_version: str
    out: Path


@dataclass(frozen=True)
class NudgesJob:
    """What every range of members of a run shares (plain values: a Dask worker gets them)."""

    settings: Any
    as_of: dt.datetime
    channel: str
    dry_run: bool
    version: str | None  # the propensity model, chosen once by the caller; None: none
    item_ids: list[int]
    staging: Path  # where each range writes its CSV rows, a file a range
    token: str  # tells a worker a new run started


@dataclass(frozen=True)
class NudgesPart:
    """What one range of members gave: its CSV file (rows, no header) and its counts."""

    path: Path
    members: int
    rows: int
    capped: Counter[tuple[str, str]]
    degraded: Counter[str]


PART_MEMBERS = 200_000  # members per range (their point-in-time features are read at once)


def run_nudges(ctx: Any, *, as_of: dt.datetime, out: Path, channel: str = "push",
               dry_run: bool = False, engine: Engine = LOCAL,
               say: Callable[[str], None] = print) -> NudgesRun:
    """Write every member's due nudges as of `as_of` to `out` (CSV, one row per nudge), by
    ranges of members on the `engine` (each range reading its members' features itself),
    joined in member order. Counting against SQLite caps takes one writer: then the ranges
    run here."""
    import uuid

    from recsvc.data import schema
    from recsvc.offline.batch_scoring import features_as_of, version_as_of
    from recsvc.progress import Stopwatch, progress

    data_dir = Path(ctx.settings.data_dir)
    known = features_as_of(data_dir)
    if as_of > known:
        raise DataMissing(f"features end at {known:%Y-%m-%d %H:%M} UTC: nudges as of "
                          f"{as_of:%Y-%m-%d %H:%M} would miss what happened since; run "
                          "`recsvc features` first")
    members = schema.read_table(data_dir, "members", ["member_id", "signup_at"]).to_pandas()
    member_ids = members.member_id[members.signup_at < as_of].astype(int).tolist()
    item_ids = schema.read_table(data_dir, "items", ["item_id"])["item_id"].to_pylist()
    version = version_as_of(ctx.registry, "propensity", as_of)
    if version is None:
        say(f"nudges: no propensity model trained on data up to {as_of:%Y-%m-%d}: options "
            "ranked by the index alone")
    if engine.distributed and not dry_run and not ctx.settings.redis_url:
        say("nudges: the SQLite cap store takes one writer: nudges decided by this process")
        engine = LOCAL
    say(f"nudges: {len(member_ids):,} members as of {as_of:%Y-%m-%d %H:%M} UTC on {channel}"
        f"{' (dry run: caps checked, nothing counted)' if dry_run else ''}")
    watch = Stopwatch()
    out.parent.mkdir(parents=True, exist_ok=True)
    job = NudgesJob(ctx.settings, as_of, channel, dry_run, version, item_ids,
                    out.with_name(f".{out.name}.parts-{uuid.uuid4().hex[:8]}"),
                    uuid.uuid4().hex)
    job.staging.mkdir()
    tmp = out.with_name(f".{out.name}.tmp")
    parts = engine.parts(len(member_ids), PART_MEMBERS)
    ranges = [member_ids[len(member_ids) * k // parts:len(member_ids) * (k + 1) // parts]
              for k in range(parts)]
    try:
        with progress("nudges", len(member_ids), unit="members") as bar:
            done = engine.map(nudges_part, [r for r in ranges if r] or [[]], job=job,
                              ctx=None if engine.distributed else ctx,
                              on_member=None if engine.distributed else bar.update,
                              on_done=(lambda p: bar.update(p.members))
                              if engine.distributed else None)
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(COLUMNS)
            for part in done:  # in member order
                with part.path.open(encoding="utf-8", newline="") as written:
                    shutil.copyfileobj(written, handle)
        tmp.replace(out)  # a reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(job.staging, ignore_errors=True)
    rows = sum(p.rows for p in done)
    capped = sum((p.capped for p in done), Counter[tuple[str, str]]())
    degraded = sum((p.degraded for p in done), Counter[str]())
    say(watch.summary("nudges", len(member_ids), "members") + f"; {rows:,} nudge"
        f"{'s' if rows != 1 else ''} ({rows / max(watch.seconds, 1e-9):,.0f} rows/s) to {out}")
    if capped:
        say("nudges: withheld by caps: " + ", ".join(
            f"{kind} by {cap} {count:,}" for (kind, cap), count in sorted(capped.items())))
    for reason, count in sorted(degraded.items()):
        say(f"nudges: {count:,} answers degraded: {reason}")
    return NudgesRun(len(member_ids), rows, capped, degraded, watch.seconds, version or "", out)


def nudges_part(members: list[int], *, job: NudgesJob, ctx: Any = None,
                on_member: Callable[[int], Any] | None = None) -> NudgesPart:
    """One range of members' nudges, through `Dataplane.nudges` over their point-in-time
    features, written to a CSV file of the range's own. `ctx`: the caller's context (the local
    engine), else a worker opens its own once a run."""
    from prometheus_client import CollectorRegistry

    from recsvc.adapters.caps import open_cap_store
    from recsvc.adapters.context import open_context
    from recsvc.adapters.model_holder import ModelHolder, Served
    from recsvc.app.answers import NudgeRequest
    from recsvc.app.catalogue import Catalogue
    from recsvc.app.dataplane import Dataplane
    from recsvc.metrics import ServiceMetrics
    from recsvc.ml.scoring import PropensityScorer

    if ctx is None:
        ctx = worker_held("nudges", job.settings, job.token, lambda: open_context(job.settings))
    metrics = ServiceMetrics(CollectorRegistry())
    propensity = ModelHolder("propensity", ctx.registry, lambda loaded: loaded, metrics)
    if job.version is not None:
        loaded = ctx.registry.load("propensity", job.version, known_features=ctx.known_features)
        propensity.current = Served(job.version, PropensityScorer(loaded, ctx.programme))
    source = AsOfSource(ctx.store, job.as_of, {"member_id": members, "item_id": job.item_ids})
    catalogue = Catalogue(source, lambda: job.item_ids)
    catalogue.refresh()
    capped: Counter[tuple[str, str]] = Counter()
    degraded: Counter[str] = Counter()
    rows = 0
    path = job.staging / f"{members[0] if members else 0:012d}.csv"
    caps = open_cap_store(ctx.settings, ctx.store)
    try:
        plane = Dataplane(source, ModelHolder("churn", ctx.registry, lambda x: x, metrics),
                          metrics, programme=ctx.programme, propensity=propensity,
                          catalogue=catalogue, caps=caps, clock=job.as_of.timestamp)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            for member in members:
                answer = plane.nudges(NudgeRequest(member, channel=job.channel,
                                                   dry_run=job.dry_run), RPC)
                for n in answer.nudges:
                    writer.writerow([
                        member, n.kind, n.points,
                        n.expires_at.isoformat() if n.expires_at else "",
                        " ".join(str(o.item_id) for o in n.options),
                        n.unlock.category if n.unlock else "",
                        n.unlock.spend_to_unlock_minor if n.unlock else "", n.message])
                rows += len(answer.nudges)
                capped.update((c.kind, c.cap) for c in answer.capped)
                degraded.update(answer.degraded)
                if on_member is not None:
                    on_member(1)
    finally:
        caps.close()
    return NudgesPart(path, len(members), rows, capped, degraded)


def default_out(data_dir: Path, as_of: dt.date) -> Path:
    """Where a run writes without --out: under the data directory, one file per as-of day, so
    a job run from the repository (`make nudges`) leaves nothing in the working tree."""
    return Path(data_dir) / OUT_DIR / f"nudges-{as_of.isoformat()}.csv"


def _cmd_nudges(args: argparse.Namespace) -> int:
    from recsvc.adapters.context import open_context
    from recsvc.metrics import recorded_job

    settings = load_settings()
    out = args.out if args.out is not None else default_out(settings.data_dir, args.as_of)
    with recorded_job(settings.job_metrics_dir / "recsvc_nudges.prom", "nudges") as run, \
            open_engine(args.engine, args.scheduler, args.workers) as engine:
        ctx = open_context(settings)
        result = run_nudges(ctx, as_of=end_of_day(args.as_of), out=out, channel=args.channel,
                            dry_run=args.dry_run, engine=engine)
        run.rows = result.rows
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "nudges", help="every member's due nudges (expiry, low balance, unlocks) as of a date",
        description="Decide every member's nudges as of the end of a day with the code GetNudges "
                    "runs: features and catalogue as Feast knew them at that instant, points "
                    "lapsing by then, a propensity model that saw nothing later, and the "
                    "frequency caps (counted in the service's cap store, that instant being "
                    "'now', unless --dry-run). Writes a CSV with columns "
                    + ",".join(COLUMNS) + " (option_item_ids space-separated).")
    p.add_argument("--as-of", type=date_arg, required=True,
                   help="decide as of the end of this day, YYYY-MM-DD")
    p.add_argument("--out", type=Path, default=None,
                   help=f"the CSV to write (default DATA_DIR/{OUT_DIR}/nudges-AS_OF.csv)")
    p.add_argument("--channel", choices=CHANNELS, default="push",
                   help="the channel the nudges go out on (default push)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the caps without counting the nudges against them")
    add_engine_args(p)
    p.set_defaults(func=_cmd_nudges)
