"""Model jobs: `recsvc train`, `recsvc models list|promote|rollback`, `retrain`, `score-batch`.

Exit codes (for schedulers): 0 done (models promoted, or nothing needed promoting); 2 bad
input, configuration or missing data; 3 a model was trained but the gate refused it (the
production model keeps serving); 4 another retraining is running; 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsvc.adapters.context import Context, open_context
from recsvc.cliargs import date_arg, end_of_day, int_in
from recsvc.engine import LOCAL, Engine, add_engine_args, open_engine
from recsvc.errors import PromotionRefused, RecsvcError
from recsvc.settings import Settings, load_settings

log = logging.getLogger(__name__)

EXIT_REFUSED = 3
EXIT_BUSY = 4
MODELS = ("propensity", "churn")


class JobBusy(RecsvcError):
    """Another run of the same job holds its lock."""


@contextlib.contextmanager
def job_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock: a second run fails at once instead of waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobBusy(f"another run holds {path}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fingerprint(settings: Settings) -> str:
    stamp = Path(settings.data_dir) / "features" / "_manifest.json"
    try:
        import json

        return str(json.loads(stamp.read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return "unknown"


# --------------------------------------------------------------------------------------------
# train / promote.
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    promoted: dict[str, str]
    refused: dict[str, list[str]]
    metrics: dict[str, tuple[str, dict[str, float]]]


def train_and_promote(
    ctx: Context,
    models: tuple[str, ...],
    *,
    as_of: dt.datetime | None,
    horizon_days: int | None = None,
    promote: bool = True,
    engine: Engine = LOCAL,
    say: Callable[[str], None] = print,
) -> Outcome:
    from recsvc.adapters.manifest import Gate
    from recsvc.offline.training import TrainOptions, train_model

    opts = TrainOptions(as_of=as_of, engine=engine,
                        horizon_days=horizon_days or ctx.programme.churn.horizon_days)
    outcome = Outcome({}, {}, {})
    for name in models:
        if name == "propensity" and len(models) > 1 and not _has_exposures(ctx.settings):
            say("propensity: skipped: the data has no exposures (an imported transaction log)")
            continue
        result = train_model(name, Path(ctx.settings.data_dir), ctx.programme, ctx.history,
                             ctx.registry, opts, data_fingerprint=_fingerprint(ctx.settings),
                             say=say)
        version = result.manifest.version
        outcome.metrics[name] = (version, dict(result.manifest.metrics))
        if not promote:
            continue
        try:
            ctx.registry.promote(name, version, Gate(), known_features=ctx.known_features)
        except PromotionRefused as exc:
            outcome.refused[name] = [str(exc)]
            say(f"{name}: {version} NOT promoted: {exc}")
            continue
        outcome.promoted[name] = version
        say(f"{name}: {version} promoted to production")
    return outcome


def _has_exposures(settings: Settings) -> bool:
    from recsvc.data import schema

    return schema.read_table(Path(settings.data_dir), "exposures", ["exposure_id"]).num_rows > 0


def _as_of(day: dt.date | None) -> dt.datetime | None:
    return None if day is None else end_of_day(day)


def _cmd_train(args: argparse.Namespace) -> int:
    settings = load_settings()
    ctx = open_context(settings)
    models = MODELS if args.model == "all" else (args.model,)
    with open_engine(args.engine, args.scheduler, args.workers) as engine:
        outcome = train_and_promote(ctx, models, as_of=_as_of(args.as_of),
                                    horizon_days=args.horizon_days, promote=not args.no_promote,
                                    engine=engine)
    return EXIT_REFUSED if outcome.refused else 0


def _cmd_models(args: argparse.Namespace) -> int:
    from recsvc.adapters.manifest import Gate
    from recsvc.adapters.registry import Registry

    settings = load_settings()
    registry = Registry(settings.registry_dir)
    if args.action == "list":
        names = [args.name] if args.name else registry.names()
        if not names:
            print(f"no models in {settings.registry_dir}")
        for name in names:
            for info in registry.list(name):
                mark = "*" if info.in_production else " "
                auc = info.metrics.get("roc_auc")
                best = max((v.get("roc_auc", 0.0) for v in info.baseline_metrics.values()),
                           default=None)
                print(f"{mark} {name:12s} {info.version}  {info.created_at or '?':25s}  valid "
                      f"AUC {'-' if auc is None else f'{auc:.4f}'}  best baseline "
                      f"{'-' if best is None else f'{best:.4f}'}"
                      + (f"  BROKEN: {info.error}" if info.error else ""))
        return 0
    if args.action == "promote":
        ctx = open_context(settings)
        promotion = ctx.registry.promote(args.name, args.version, Gate(), force=args.force,
                                         known_features=ctx.known_features)
        print(f"{args.name}: {promotion}")
        return 0
    version = registry.rollback(args.name)
    print(f"{args.name}: production rolled back to {version}")
    return 0


# --------------------------------------------------------------------------------------------
# retrain: the scheduled job.
# --------------------------------------------------------------------------------------------
def _cmd_retrain(args: argparse.Namespace) -> int:
    from recsvc.config import load_programme
    from recsvc.jobs.features import run_features
    from recsvc.metrics import recorded_job

    settings = load_settings()
    textfile = settings.job_metrics_dir / "recsvc_retrain.prom"
    started = time.time()
    try:
        with job_lock(Path(settings.data_dir) / ".retrain.lock"), \
                recorded_job(textfile, "retrain") as run, \
                open_engine(args.engine, args.scheduler, args.workers) as engine:
            print("retrain: 1/3 refreshing features")
            run_features(settings, load_programme(settings.programme), as_of=args.as_of,
                         engine=engine)
            print("retrain: 2/3 training, evaluating and gating")
            ctx = open_context(settings)
            outcome = train_and_promote(ctx, MODELS, as_of=_as_of(args.as_of),
                                        horizon_days=args.horizon_days, engine=engine)
            run.outcome = "refused" if outcome.refused else "promoted"
            run.models = outcome.metrics
    except JobBusy as exc:
        print(f"retrain: {exc}; not starting a second run")
        return EXIT_BUSY
    print(f"retrain: 3/3 done in {time.time() - started:.0f} s: promoted {outcome.promoted or '-'}"
          f", refused {list(outcome.refused) or '-'}; metrics in {textfile}")
    return EXIT_REFUSED if outcome.refused else 0


# --------------------------------------------------------------------------------------------
# score-batch.
# --------------------------------------------------------------------------------------------
def _cmd_score_batch(args: argparse.Namespace) -> int:
    from recsvc.metrics import recorded_job
    from recsvc.offline.batch_scoring import score_batch

    settings = load_settings()
    with recorded_job(settings.job_metrics_dir / "recsvc_score_batch.prom", "score_batch") as run:
        ctx = open_context(settings)
        with open_engine(args.engine, args.scheduler, args.workers) as engine:
            result = score_batch(ctx, as_of=_as_of(args.as_of), out=args.out,
                                 horizon_days=args.horizon_days, engine=engine)
        run.rows = result.rows
    return 0


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------
_horizon = int_in(1, 730)


def _add_window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as-of", type=date_arg, default=None,
                   help="use only data up to the end of this day, YYYY-MM-DD (default: all)")
    p.add_argument("--horizon-days", type=_horizon, default=None,
                   help="churn label: no order within this many days after a cut-off "
                        "(default: the programme's churn.horizon_days, 90)")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train, evaluate and (if the gates pass) promote the models",
        description="Build point-in-time training sets through Feast (feature services "
                    "propensity_v1 and churn_v1), train LightGBM with early stopping and "
                    "calibration, evaluate against baselines (and the simulator's oracle), "
                    "register a new version with its report, and promote it when it beats the "
                    "best baseline and does not regress against production. Exit 3: trained "
                    "but refused by the gate. With --engine dask, LightGBM trains "
                    "data-parallel on the Dask workers (lightgbm.dask), stopped where early "
                    "stopping on the whole validation set would stop it.")
    p.add_argument("--model", choices=[*MODELS, "all"], default="all")
    p.add_argument("--no-promote", action="store_true", help="register only")
    _add_window(p)
    add_engine_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("models", help="list, promote or roll back model versions",
                       description="Inspect and move the production pointer of the registry "
                                   "($RECSVC_MODEL_REGISTRY, default DATA_DIR/models).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("list", help="versions with metrics; * marks production")
    a.add_argument("name", nargs="?", choices=MODELS)
    a = actions.add_parser("promote", help="make a version production (gated)")
    a.add_argument("name", choices=MODELS)
    a.add_argument("version", help="e.g. v0003")
    a.add_argument("--force", action="store_true", help="skip the gate (still validated)")
    a = actions.add_parser("rollback", help="restore the previous production version")
    a.add_argument("name", choices=MODELS)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "retrain", help="the scheduled job: features -> train -> evaluate -> gate -> promote",
        description="Refresh features, retrain both models, gate and promote. Refuses to run "
                    "twice at once (exit 4). Writes outcome, duration and model metrics as a "
                    "Prometheus textfile under $RECSVC_METRICS_DIR (default DATA_DIR/metrics). "
                    "Exit codes: 0 promoted, 2 bad input or missing data, 3 refused by the "
                    "gate, 4 already running.")
    _add_window(p)
    add_engine_args(p)
    p.set_defaults(func=_cmd_retrain)

    p = sub.add_parser(
        "score-batch", help="churn probability, band, segment and action for every member",
        description="Score every member with the production churn model as of a date: write "
                    "the scores to the offline store, materialise them as the online feature "
                    "view member_churn_scores, and optionally to a CSV with columns "
                    "customer_id,churn_probability,band,segment,action,member_id. The cut-off "
                    "is respected everywhere: features as known at the as-of instant, and a "
                    "churn model trained on data up to it (production if it qualifies, else the "
                    "newest registered one that does, else one trained on the spot). With --engine "
                    "dask, ranges of member ids are scored and materialised on the Dask "
                    "workers.")
    p.add_argument("--as-of", type=date_arg, default=None,
                   help="score as of the end of this day (default: the end of the data)")
    p.add_argument("--out", type=Path, default=None, help="also write the scores to this CSV")
    p.add_argument("--horizon-days", type=_horizon, default=None,
                   help="score P(no order within this many days) with a churn version trained "
                        "at that horizon (default: the programme's churn.horizon_days, 90)")
    add_engine_args(p)
    p.set_defaults(func=_cmd_score_batch)
