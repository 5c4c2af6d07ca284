"""`recsvc simulate`: the simulator's command line (`recsvc.offline.simulate` is the simulator)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsvc.cliargs import date_arg, number_in, positive_int
from recsvc.config import load_programme
from recsvc.offline.simulate import ABUSER_SHARE, DEFAULT_START, run_simulation

SHARE = number_in(0, 0.5)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a loyalty programme (members, catalogue, orders, ledger, exposures)",
        description=(
            "Simulate members of a loyalty-points programme day by day and write the canonical "
            "tables (members, items, item_days, orders, ledger, redemptions, exposures) under "
            "OUT/tables with the parameters in OUT/tables/simulation.json, and the true "
            "probabilities under OUT/oracle (P(redeem) per exposure, "
            "P(no order in 90 days) per member at each month start, the planted points abusers). "
            "Members buy till they die "
            "(latent purchase rate and drop-out), earn points by the programme rules, lose "
            "them at month ends after the expiry period, and redeem shown items with a known "
            "probability. The same seed gives the same data."
        ),
    )
    p.add_argument("--members", type=positive_int, default=20_000, help="members (default 20000)")
    p.add_argument("--days", type=positive_int, default=365, help="days simulated (default 365)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--start",
        type=date_arg,
        default=DEFAULT_START,
        help=f"first simulated day, YYYY-MM-DD (default {DEFAULT_START})",
    )
    p.add_argument(
        "--items",
        type=positive_int,
        default=None,
        help="catalogue size (default members/10, between 300 and 3000)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="data directory to write (default $RECSVC_DATA_DIR or ./data)",
    )
    p.add_argument(
        "--abusers",
        type=SHARE,
        default=ABUSER_SHARE,
        help=f"share of members planted as points abusers (default {ABUSER_SHARE})",
    )
    p.set_defaults(func=_main)



def _main(args: argparse.Namespace) -> int:
    from recsvc.settings import load_settings

    settings = load_settings()
    out = args.out or settings.data_dir
    programme = load_programme(settings.programme)
    summary = run_simulation(
        out,
        members=args.members,
        days=args.days,
        seed=args.seed,
        programme=programme,
        start=args.start,
        items=args.items,
        abusers=args.abusers,
    )
    total = summary.total_rows
    print(
        f"simulated {summary.members:,} members, {summary.items:,} items, {summary.days} days "
        f"into {out}"
    )
    for name, n in sorted(summary.rows.items()):
        print(f"  {name:12s} {n:>12,}")
    print(f"  planted points abusers: {summary.abusers} (oracle/abusers)")
    rate = total / max(summary.seconds, 1e-9)
    print(f"{total:,} rows in {summary.seconds:.1f} s ({rate:,.0f} rows/s)")
    return 0
