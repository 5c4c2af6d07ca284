"""The `recsvc` command: one subcommand per job; each job module registers its own parser.

Job modules keep heavy imports (Feast, LightGBM) inside their run functions so that
`recsvc --help` and the light jobs start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from recsvc.errors import RecsvcError

# Each module defines `register(subparsers)`, which adds its subcommand(s) and sets `func`.
COMMAND_MODULES = (
    "recsvc.data.simulate",
    "recsvc.data.importer",
    "recsvc.features.jobs",
    "recsvc.models.jobs",
    "recsvc.models.fraud",
    "recsvc.serving.main",
    "recsvc.serving.nudges_job",
    "recsvc.reports.catalogue",
    "recsvc.reports.liability",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc",
        description="Recommendation and redemption scoring for loyalty-points programmes.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # LightGBM's OpenMP threads spin while they wait; on a machine shared with another process
    # that made training 70x slower here. Passive waiting costs little; set before it loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
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
