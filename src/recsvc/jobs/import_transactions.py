"""`recsvc import-transactions`: the importer's command line (`recsvc.offline.importer` reads
the log)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsvc.config import load_programme
from recsvc.data import schema
from recsvc.offline.importer import HELP_DESCRIPTION, HELP_EPILOG, import_transactions


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import-transactions",
        help="import a real transaction log (CSV) as members, orders and points ledger",
        description=HELP_DESCRIPTION,
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, metavar="FILE.csv",
                   help="the transaction log (UTF-8 CSV with a header; .gz/.bz2/.zst also read)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data directory to write (default $RECSVC_DATA_DIR or ./data)")
    p.add_argument("--timezone", default="UTC", metavar="TZ",
                   help="IANA time zone of timestamps without an offset (default UTC)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from recsvc.settings import load_settings

    settings = load_settings()
    data_dir = args.data_dir or settings.data_dir
    programme = load_programme(settings.programme)
    s = import_transactions(args.file, data_dir, programme, tz=args.timezone)
    print(f"imported {args.file} into {schema.tables_dir(data_dir)}")
    period = f"{s.first_ts:%Y-%m-%d %H:%M} .. {s.last_ts:%Y-%m-%d %H:%M} UTC"
    lines: Sequence[tuple[str, str]] = (
        ("rows read", f"{s.rows_read:,}"),
        ("blank lines skipped", f"{s.blank_lines:,}"),
        ("duplicates dropped", f"{s.duplicates_dropped:,}"),
        ("basket lines merged", f"{s.basket_lines_merged:,}"),
        ("orders", f"{s.orders:,}"),
        ("members", f"{s.members:,}"),
        ("ledger entries", f"{s.ledger_entries:,} ({s.earn_entries:,} earn, "
                           f"{s.expire_entries:,} expire)"),
        ("points", f"{s.points_earned:,} earned, {s.points_expired:,} expired"),
        ("period", period),
    )
    for label, value in lines:
        print(f"  {label:20s} {value}")
    print(f"{s.rows_read:,} rows in {s.seconds:.1f} s ({s.rows_per_second:,.0f} rows/s)")
    return 0
