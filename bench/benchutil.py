"""What the benchmark scripts share: a description of the machine they ran on, and where their
results go.

The rule for where (one rule for every script that writes results: bench_*.py, fuzz.py,
chaos.py): bench/results/ holds the committed numbers the README quotes, so only a run with
every option at its default, the full run those numbers describe, writes there by default. A
run with any other option (--quick, --rows, other sizes, durations or faults) is ad hoc and
writes to a folder of its own under the system's temporary directory, and says so. An explicit
--out always wins, bench/results/ included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"  # the committed results
OUT_HELP = ("results folder (default: bench/results for a run with every option at its default, "
            "else a folder under the system's temporary directory, printed)")


def exit_on_sigterm() -> None:
    """SIGTERM (a `kill`, a CI's timeout) ends the script as an exception would, so its
    `finally` blocks stop what it started (servers, a Redis Cluster's nodes) instead of
    leaving them running."""
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))


def scratch_dir() -> Path:
    """Where ad-hoc runs write: one folder per user under the system's temporary directory (a
    name shared by every user would be someone else's, and not writable)."""
    return Path(tempfile.gettempdir()) / f"recsvc-bench-{os.getuid()}"


def changed_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    ignore: Collection[str] = ("out",)) -> list[str]:
    """The options of `args` (just parsed, before any defaults are filled in) whose value is not
    the parser's default, as flags: ["--quick", "--rows"]. `ignore`: destinations that do not
    change what is measured."""
    return [f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
            if dest not in ignore and value != parser.get_default(dest)]


def results_dir(out: Path | None, changed: Sequence[str], *, committed: Path = RESULTS,
                scratch: Path | None = None) -> Path:
    """Where a run writes its results: `out` when given; `committed` (bench/results) for a run
    with no option `changed`; else `scratch` (default scratch_dir()), so that a smoke run never
    replaces the numbers that are committed."""
    if out is not None:
        return out
    if not changed:
        return committed
    return scratch if scratch is not None else scratch_dir()


def choose_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """`results_dir` for a script's parsed `args` (its --out defaulting to None), printing where
    an ad-hoc run goes and why; call it right after parse_args."""
    changed = changed_options(parser, args)
    out = results_dir(args.out, changed)
    if args.out is None and changed:
        print(f"ad-hoc run ({' '.join(changed)}): results go to {out}; bench/results/ keeps "
              "the committed full runs (written by a run with every option at its default, "
              "or with --out bench/results)", flush=True)
    return out


def population(data_dir: Path, **sizes: int) -> dict[str, int]:
    """`sizes` (members, days, seed) for `recsvc features` when `data_dir` has no tables yet,
    else none: a kept data directory is benchmarked as it is (the job refuses a size that
    differs from the tables on disk), and the results record the population found."""
    from recsvc.data import schema

    return {} if schema.has_tables(data_dir) else sizes


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def save_results(out_dir: Path, name: str, result: dict[str, Any],
                 render: Callable[[dict[str, Any]], str]) -> None:
    """Stamp the finish time, render the Markdown, write `<name>.json` and `<name>.md` under
    out_dir, print the table and where it went."""
    result["finished"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    markdown = render(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out_dir / f"{name}.md").write_text(markdown, encoding="utf-8")
    print()
    print(markdown)
    print(f"wrote {out_dir / f'{name}.json'} and {out_dir / f'{name}.md'}")
