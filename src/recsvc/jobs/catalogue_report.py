"""`recsvc catalogue-report`: the command line of the catalogue report
(`recsvc.reports.catalogue`)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from recsvc.cliargs import date_arg, number_in, positive_int
from recsvc.config import load_programme
from recsvc.core import inventory as core
from recsvc.reports.catalogue import FLAGS, TOP, catalogue_report
from recsvc.settings import load_settings

SHARE = number_in(0, 1, inclusive=False)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "catalogue-report",
        help="stock, forecast, turnover and inventory flags per item (Markdown, CSV, plot)",
        description="Per redeemable item as of a date: forecast monthly redemptions, safety "
                    "level, stock turnover days, and the flags of the programme's inventory "
                    "rules: below safety level, slow mover, a suggested points-price cut (below "
                    "safety on a slow mover), popular and out of stock (with alternates), "
                    "delisting candidate. Writes catalogue.md, catalogue.csv and catalogue.png "
                    "(value coefficient × redemption rate) and prints a summary.")
    p.add_argument("--as-of", type=date_arg, default=None, metavar="DATE",
                   help="as of the end of this UTC day, YYYY-MM-DD; nothing later is read "
                        "(default: the day of the latest event in the tables)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output directory (default DATA_DIR/reports/catalogue)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data directory (default $RECSVC_DATA_DIR or ./data)")
    p.add_argument("--popular-quantile", type=SHARE, default=core.POPULAR_QUANTILE,
                   help="popular: views at or above this quantile of the catalogue's "
                        f"(default {core.POPULAR_QUANTILE}: the top quartile)")
    p.add_argument("--price-cut", type=SHARE, default=core.PRICE_CUT,
                   help=f"share taken off a suggested points price (default {core.PRICE_CUT})")
    p.add_argument("--top", type=positive_int, default=TOP,
                   help=f"items listed per flag in the Markdown (default {TOP})")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    settings = load_settings(data_dir=args.data_dir)
    programme = load_programme(settings.programme)
    report = catalogue_report(settings.data_dir, programme, as_of=args.as_of, out_dir=args.out,
                              popular_quantile=args.popular_quantile, cut=args.price_cut,
                              top=args.top)
    n = len(report.loaded.history)
    print(f"catalogue report as of {(report.as_of - dt.timedelta(days=1)).date()}: {n:,} items")
    for flag, label in FLAGS.items():
        print(f"  {label:60s} {report.counts[flag]:>7,}")
    print(f"written to {report.out_dir} (catalogue.md, catalogue.csv, catalogue.png)")
    return 0
