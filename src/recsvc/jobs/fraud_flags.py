"""`recsvc fraud-flags`: the command line of the fraud flags (`recsvc.offline.fraud`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from recsvc.cliargs import date_arg, end_of_day
from recsvc.engine import add_engine_args, open_engine
from recsvc.offline.fraud import run_fraud_flags


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fraud-flags", help="points-fraud flags per member (rules + isolation forest), published",
        description="Flag abnormal points flows as of a date: redemption bursts, balance drains "
                    "and earn-then-burn loops by the rules of the programme's [fraud] section, "
                    "and the most anomalous members by an isolation forest trained on member-day "
                    "aggregates. Writes the feature view member_fraud_flags (fraud_flags, "
                    "anomaly_score) to DATA_DIR/scores and materialises it online (feature "
                    "service fraud_v1); with simulated data, reports precision and recall "
                    "against the planted abusers under DATA_DIR/reports/fraud. Job metrics go "
                    "to $RECSVC_METRICS_DIR/recsvc_fraud_flags.prom.")
    p.add_argument("--as-of", type=date_arg, default=None,
                   help="flags as of the end of this UTC day, YYYY-MM-DD (default: the end of "
                        "the day of the latest ledger entry)")
    p.add_argument("--out", type=Path, default=None,
                   help="also write every member's flags and evidence to this CSV")
    add_engine_args(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from recsvc.config import load_programme
    from recsvc.metrics import recorded_job
    from recsvc.settings import load_settings

    settings = load_settings()
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("feast").setLevel(logging.WARNING)  # a line per registry refresh
    with recorded_job(settings.job_metrics_dir / "recsvc_fraud_flags.prom", "fraud_flags") as run, \
            open_engine(args.engine, args.scheduler, args.workers) as engine:
        result = run_fraud_flags(settings, load_programme(settings.programme),
                                 as_of=None if args.as_of is None else end_of_day(args.as_of),
                                 out=args.out, engine=engine)
        run.rows = result.rows
    return 0
