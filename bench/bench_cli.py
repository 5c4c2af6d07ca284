"""Benchmark how fast the `recsvc` command starts: the first thing a new user waits for.

    python bench/bench_cli.py [--runs 10] [--address HOST:PORT] [--out bench/results/cli.md]

Each command runs `--runs` times as a fresh subprocess of this interpreter's `recsvc` script
(`python -m recsvc.cli` where there is none), and the table gives the p50 and max wall
seconds, and whether the p50 meets the 0.3 s goal. `client hint` calls a port nothing
listens on, so it measures start-up, grpc's import and one refused call, not the service; the
call is retried as the advised service config says (recsvc.transport.channel: three more
attempts, backing off up to 50, 150 and 450 ms), which is most of its time. With --address
(a running `recsvc serve`, e.g. `make run`'s 127.0.0.1:50051) a real call is timed too: start-up,
the call and printing its answer. The bare
interpreter is timed too: the floor no command can go under. Timings vary with the machine
and its load, so they are reported, never asserted by the tests.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_S = 0.3


def recsvc_command() -> list[str]:
    """The `recsvc` console script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("recsvc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "recsvc.cli"]


def closed_address() -> str:
    """host:port of a port just freed: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def commands(address: str | None = None) -> dict[str, list[str]]:
    """What is timed, by the name the table gives it (`address`: a service to call)."""
    recsvc = recsvc_command()
    served = {} if address is None else {
        "recsvc client churn 1 (answered)": [*recsvc, "client", "--address", address, "churn",
                                             "1"]}
    return {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "recsvc --help": [*recsvc, "--help"],
        "recsvc client --help": [*recsvc, "client", "--help"],
        "recsvc client hint (refused, retried)": [*recsvc, "client", "--address", closed_address(),
                                         "--timeout", "1", "hint", "1", "1"],
        **served,
    }


def wall_seconds(argv: list[str]) -> float:
    """One run's wall time; a --help that fails, or a refused call that does not report
    UNAVAILABLE, stops the benchmark (a broken command is not fast)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    refused = done.returncode == 1 and "UNAVAILABLE" in done.stdout
    if done.returncode != 0 and not refused:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return took


def render(rows: dict[str, list[float]], runs: int) -> str:
    """The Markdown table: p50 and max per command, and the goal met or missed."""
    lines = [f"CLI start-up, {runs} runs each (wall seconds; goal: p50 < {GOAL_S} s)", "",
             "| command | p50 s | max s | goal |", "|---|---:|---:|---|"]
    for name, times in rows.items():
        p50 = statistics.median(times)
        # the floor, and a refused call's retries (by design), are not start-up
        goal = ("-" if "floor" in name or "refused" in name
                else "met" if p50 < GOAL_S else "missed")
        lines.append(f"| {name} | {p50:.3f} | {max(times):.3f} | {goal} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command (default 10)")
    parser.add_argument("--address", default=None,
                        help="a running recsvc serve to time an answered call against")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the table (Markdown) here (default: print only)")
    args = parser.parse_args()
    timed = commands(args.address)
    for argv in timed.values():  # one untimed run each: the files in the page cache
        wall_seconds(argv)
    rows = {name: [wall_seconds(argv) for _ in range(args.runs)] for name, argv in timed.items()}
    table = render(rows, args.runs)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table, encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
