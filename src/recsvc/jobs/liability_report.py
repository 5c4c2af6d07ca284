"""`recsvc liability-report`: the command line of the liability forecast
(`recsvc.reports.liability`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsvc.cliargs import date_arg, int_in
from recsvc.reports.liability import run


def _cmd(args: argparse.Namespace) -> int:
    from recsvc.config import load_programme
    from recsvc.metrics import recorded_job
    from recsvc.settings import load_settings

    settings = load_settings()
    programme = load_programme(settings.programme)
    with recorded_job(settings.job_metrics_dir / "recsvc_liability_report.prom",
                      "liability_report") as job:
        fc, _, _ = run(settings, programme, as_of=args.as_of, horizon=args.horizon_months,
                       out_dir=args.out, backtest=args.backtest, use_model=not args.no_model,
                       calibrate=args.calibrate)
        job.rows = fc.members
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "liability-report", help="forecast the points liability (redeemed, expired, "
                                 "outstanding per month) with a backtest",
        description="Project every member's points month by month from the as-of instant: "
                    "earning and redemption at the member's own (shrunk) historical rates while "
                    "still a customer (the churn model's probability), burns FIFO by expiry, "
                    "breakage when lots lapse. Writes liability.md, liability.json and plots "
                    "with a bootstrap interval over members to DATA_DIR/reports/liability/. "
                    "--backtest compares the forecast with the months the tables hold beyond "
                    "the as-of instant.")
    p.add_argument("--as-of", type=date_arg, default=None,
                   help="forecast from the end of this day, YYYY-MM-DD (default: the end of the "
                        "data; with --backtest, the month start --horizon-months whole months "
                        "before the end of the last whole month of data)")
    p.add_argument("--horizon-months", type=int_in(1, 60), default=None,
                   help="months ahead (default [liability] horizon_months)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default DATA_DIR/reports/liability)")
    p.add_argument("--backtest", action="store_true",
                   help="compare with what the tables did after the as-of instant")
    p.add_argument("--no-model", action="store_true",
                   help="skip the churn model: history-based activity (stated in the report)")
    p.add_argument("--calibrate", action="store_true",
                   help="scale the earn and burn rates by a back-fit from origins 3-6 months "
                        "before the as-of month (measured unstable, off by default: see the "
                        "report's method section)")
    p.set_defaults(func=_cmd)
