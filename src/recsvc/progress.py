"""Progress bars and throughput lines for long jobs (a bar on a terminal, a summary always)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress(desc: str, total: int | None, unit: str = "rows") -> Iterator[tqdm]:
    """A tqdm bar on stderr when it is a terminal (silent otherwise), closed on exit."""
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()


class Stopwatch:
    """Measures one job step and formats its throughput."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rate(self, rows: int) -> float:
        return rows / max(self.seconds, 1e-9)

    def summary(self, what: str, rows: int, unit: str = "rows") -> str:
        return f"{what}: {rows:,} {unit} in {self.seconds:.1f} s ({self.rate(rows):,.0f} {unit}/s)"
