"""The `recsvc` command: one subcommand per job; each job module registers its own parser.

Job modules import heavy libraries (Feast, LightGBM, pandas) when they load, and a new user's
first commands (`recsvc --help`, `recsvc client ...`) must not wait for them: the commands are
listed from the static table COMMANDS, and only the module of the command being run is
imported, to register its real parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence

from recsvc.errors import RecsvcError

# command -> (the module whose `register(subparsers)` adds it and sets `func`, its one-line
# help). The help is the module's own, repeated so that `recsvc --help` imports no module;
# tests/test_cli.py checks the table against what the modules register.
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("recsvc.jobs.simulate", "simulate a loyalty programme (members, catalogue, "
                                         "orders, ledger, exposures)"),
    "import-transactions": ("recsvc.jobs.import_transactions", "import a real transaction log "
                                                               "(CSV) as members, orders and "
                                                               "points ledger"),
    "features": ("recsvc.jobs.features", "compute feature snapshots, register them with Feast "
                                         "and fill the online store"),
    "train": ("recsvc.jobs.models", "train, evaluate and (if the gates pass) promote the "
                                    "models"),
    "models": ("recsvc.jobs.models", "list, promote or roll back model versions"),
    "retrain": ("recsvc.jobs.models", "the scheduled job: features -> train -> evaluate -> "
                                      "gate -> promote"),
    "score-batch": ("recsvc.jobs.models", "churn probability, band, segment and action for "
                                          "every member"),
    "fraud-flags": ("recsvc.jobs.fraud_flags", "points-fraud flags per member (rules + "
                                               "isolation forest), published"),
    "serve": ("recsvc.transport.main", "run the gRPC service"),
    "client": ("recsvc.transport.client", "call the service from a terminal"),
    "nudges": ("recsvc.jobs.nudges", "every member's due nudges (expiry, low balance, "
                                     "unlocks) as of a date"),
    "catalogue-report": ("recsvc.jobs.catalogue_report", "stock, forecast, turnover and "
                                                         "inventory flags per item (Markdown, "
                                                         "CSV, plot)"),
    "liability-report": ("recsvc.jobs.liability_report", "forecast the points liability "
                                                         "(redeemed, expired, outstanding per "
                                                         "month) with a backtest"),
}


def build_parser(commands: Iterable[str]) -> argparse.ArgumentParser:
    """The `recsvc` parser with the real parsers of `commands` (their modules imported to
    register them); every other command is listed by its name and help only."""
    parser = argparse.ArgumentParser(
        prog="recsvc",
        description="Recommendation and redemption scoring for loyalty-points programmes.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {COMMANDS[name][0] for name in commands if name in COMMANDS}
    for name, (module, help_) in COMMANDS.items():
        if module in modules:  # its register() adds all of that module's commands
            importlib.import_module(module).register(sub)
            modules.remove(module)
        elif name not in sub.choices:
            sub.add_parser(name, help=help_)
    return parser


def command_named(argv: Sequence[str]) -> list[str]:
    """The command `argv` runs (its first word that is not an option; recsvc's own options
    take no value), or none."""
    return [arg for arg in argv if not arg.startswith("-")][:1]


def main(argv: Sequence[str] | None = None) -> int:
    # LightGBM's OpenMP threads spin while they wait; on a machine shared with another process
    # that made training 70x slower here. Passive waiting costs little; set before it loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_named(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except RecsvcError as exc:
        print(f"recsvc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"recsvc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
