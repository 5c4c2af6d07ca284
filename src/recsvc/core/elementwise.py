"""Element-wise operations that take plain Python numbers or numpy arrays alike.

The formulas of the core are written once, with arithmetic operators and these few functions,
and answer for one (member, item) pair in plain floats and ints (a product-page hint, where
numpy's per-call overhead would cost more than the formula) or for many pairs in arrays (a
100-item batch, a ranking of the whole catalogue). Arithmetic on Python floats is the same
IEEE-754 double arithmetic numpy does, so both give the same bits; `tests/test_core_index.py`
checks that the two agree.

With scalars, comparisons give Python bools; combine them with `&` and `|` (as with arrays),
and `not_` instead of `~` (which is -2 for a Python True).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_ARRAY = np.ndarray


def where(cond: Any, a: Any, b: Any) -> Any:
    """`a` where `cond` holds, else `b` (np.where for arrays)."""
    if isinstance(cond, _ARRAY) or isinstance(a, _ARRAY) or isinstance(b, _ARRAY):
        return np.where(cond, a, b)
    return a if cond else b


def minimum(a: Any, b: Any) -> Any:
    """The smaller, NaN if either is (np.minimum)."""
    if isinstance(a, _ARRAY) or isinstance(b, _ARRAY):
        return np.minimum(a, b)
    if a <= b:
        return a
    return b if b < a else math.nan  # neither holds: a NaN


def maximum(a: Any, b: Any) -> Any:
    """The larger, NaN if either is (np.maximum)."""
    if isinstance(a, _ARRAY) or isinstance(b, _ARRAY):
        return np.maximum(a, b)
    if a >= b:
        return a
    return b if b > a else math.nan


def ratio(num: Any, den: Any, otherwise: float = 0.0) -> Any:
    """num / den where den > 0, else `otherwise` (no division warnings)."""
    if isinstance(num, _ARRAY) or isinstance(den, _ARRAY):
        positive = np.asarray(den) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(positive, num / np.where(positive, den, 1), otherwise)
    return num / den if den > 0 else otherwise


def not_(flag: Any) -> Any:
    """Logical not of a bool or a bool array."""
    return ~flag if isinstance(flag, np.ndarray) else not flag


def bits(*flags: Any) -> Any:
    """The flags as one integer (or int64 array), flag j at bit j."""
    if any(isinstance(flag, _ARRAY) for flag in flags):
        out: Any = 0
        for j, flag in enumerate(flags):
            out = out | (np.asarray(flag, dtype=np.int64) << j)
        return out
    out = 0
    for j, flag in enumerate(flags):
        if flag:
            out |= 1 << j
    return out


def isnan(value: Any) -> Any:
    return np.isnan(value) if isinstance(value, np.ndarray) else math.isnan(value)
