"""Argument types shared by the job commands, so every command reads dates and counts alike."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable


def date_arg(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


positive_int = int_in(1)


def number_in(low: float, high: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a number in [low, high], or in (low, high) when not `inclusive`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (low <= value <= high if inclusive else low < value < high):
            bound = f"between {low:g} and {high:g}" + ("" if inclusive else " (exclusive)")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def end_of_day(day: dt.date) -> dt.datetime:
    """The instant a date's data ends: the next UTC midnight (the as-of instant of `day`)."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
