"""The propensity model's input rows at serving time, compiled once per catalogue load.

`PropensityRows` writes a request's rows from blocks encoded ahead (the items' once per
catalogue load, the member's once per read) and the (member, item) inputs derived from the
request's index factors: the same numbers `recsvc.ml.inputs.matrix` builds from the same
columns in training (tests/test_models.py holds them equal), without building ~45 columns a
request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.core import elementwise as ew
from recsvc.core import index as idx
from recsvc.ml.inputs import (
    INDEX_DERIVED,
    ITEM_CATALOGUE,
    ITEM_STATS,
    MEMBER_RATES,
    codes_of,
    encode,
    float_column,
    pair_inputs,
    pair_values,
)

F64 = npt.NDArray[np.float64]

ITEM_FEATURES = frozenset(ITEM_CATALOGUE + ITEM_STATS)
PAIR_DERIVED = tuple(n for n in INDEX_DERIVED if n not in MEMBER_RATES)


class PropensityRows:
    """The propensity model's input rows for one member and many catalogue items, compiled.

    Built once per (model, catalogue load): the items' inputs are encoded into one block
    (categoricals coded, missing values NaN) and every input's column in the model's order is
    fixed. A member's inputs are encoded once per member read (`member`), and a request's rows
    are the two blocks, the live balance, the surface and the (member, item) inputs derived
    from the request's index factors written into one float matrix, as `matrix` would build
    it from the same columns.
    """

    def __init__(self, names: Sequence[str], vocab: Mapping[str, Sequence[str]],
                 item_columns: Mapping[str, Any], n_items: int) -> None:
        self.width = len(names)
        self.vocab = vocab
        at = {name: j for j, name in enumerate(names)}
        self.item_at = np.array([at[n] for n in names if n in ITEM_FEATURES], dtype=np.intp)
        self.item_block = np.empty((n_items, len(self.item_at)))
        for k, j in enumerate(self.item_at):
            name = names[j]
            values = item_columns.get(name)
            if values is None:  # a feature the store does not have for items: missing
                self.item_block[:, k] = np.nan
            else:
                self.item_block[:, k] = (encode(values, vocab[name]) if name in vocab
                                         else float_column({name: values}, name))
        member = [n for n in names if n not in ITEM_FEATURES and n not in PAIR_DERIVED
                  and n not in ("points_balance", "surface")]
        self.member_names = tuple(member)
        # how each is encoded: a vocabulary's code, a rate of two features, or a number
        self._member_inputs: list[tuple[str, Mapping[Any, float] | None,
                                        tuple[str, str] | None]] = [
            (n, codes_of(tuple(vocab[n])) if n in vocab else None, MEMBER_RATES.get(n))
            for n in member]
        self.member_at = np.array([at[n] for n in member], dtype=np.intp)
        self.pair_names = tuple(n for n in names if n in PAIR_DERIVED)
        self.pair_at = [at[n] for n in self.pair_names]
        self.balance_at = at.get("points_balance")
        self.surface_at = at.get("surface")
        self.surface_codes = codes_of(tuple(vocab["surface"])) if "surface" in vocab else {}
        # what the (member, item) inputs read of the items, as training reads it
        prices = item_columns.get("points_price", np.full(n_items, np.nan))
        self.points_price = float_column({"p": prices}, "p")
        self.category = np.asarray(item_columns.get("category", np.full(n_items, None)),
                                   dtype=object)
        self.points_price_list: list[float] = self.points_price.tolist()
        self.category_list: list[Any] = self.category.tolist()

    def member(self, features: Mapping[str, Any]) -> F64:
        """The member's inputs (None or absent: missing), in `member_names` order."""
        return np.array([
            lookup.get(features.get(name), np.nan) if lookup is not None
            else ew.ratio(_number(features.get(rate[0])), _number(features.get(rate[1])),
                          math.nan) if rate is not None
            else _number(features.get(name))
            for name, lookup, rate in self._member_inputs])

    def template(self, member: F64) -> F64:
        """The member's row: their inputs (`member(...)`) in place, the rest written a request
        (`rows`, `row`), so the member's block is placed once per member read."""
        x = np.full(self.width, np.nan)
        x[self.member_at] = member
        return x

    def rows(self, positions: npt.NDArray[np.intp], features: Mapping[str, Any],
             template: F64, balance: float, surface: str, factors: idx.IndexFactors) -> F64:
        """The model matrix of the items at `positions` for the member (`features`, and their
        row by `template(member(...))`), from the member's index factors for those items."""
        pair = pair_inputs(
            factors, balance=balance, points_price=self.points_price[positions],
            expiring=_or0(features.get("points_expiring_30d")),
            item_category=self.category[positions], tops=_tops(features))
        return self._matrix((len(positions), self.width), self.item_block[positions],
                            template, balance, surface, pair)

    def row(self, position: int, features: Mapping[str, Any], template: F64, balance: float,
            surface: str, factors: idx.IndexFactors) -> F64:
        """`rows` for one item, from its factors in plain numbers (one row, 1-D)."""
        pair = pair_values(
            factors, balance=balance, points_price=self.points_price_list[position],
            expiring=_or0(features.get("points_expiring_30d")),
            item_category=self.category_list[position], tops=_tops(features))
        return self._matrix((self.width,), self.item_block[position], template, balance,
                            surface, pair)

    def _matrix(self, shape: tuple[int, ...], items: F64, template: F64, balance: float,
                surface: str, pair: Mapping[str, Any]) -> F64:
        """The member's row, the items' block, the live balance, the surface and the pair
        inputs in one matrix of `shape` (one row: 1-D). Columns are written as rows of the
        transpose, one plain index each: 2-D or Ellipsis indexing of one row costs numpy
        more than the row's own writing (7.8 against 2.3 µs)."""
        X = np.empty(shape)
        X[:] = template
        cols = X.T  # a view: the columns as its rows (1-D: the row itself)
        cols[self.item_at] = items.T
        if self.balance_at is not None:
            cols[self.balance_at] = balance
        if self.surface_at is not None:
            cols[self.surface_at] = self.surface_codes.get(surface, np.nan)
        for j, name in zip(self.pair_at, self.pair_names, strict=True):
            cols[j] = pair[name]
        return X


def _tops(features: Mapping[str, Any]) -> list[tuple[Any, float]]:
    """The member's top three categories and their shares of orders (missing shares: 0)."""
    return [(features.get(f"top_category_{j}"), _or0(features.get(f"top_category_{j}_share")))
            for j in (1, 2, 3)]


def _number(value: Any) -> float:
    """A stored number as a float, NaN where missing."""
    return math.nan if value is None else float(value)


def _or0(value: Any) -> float:
    """A stored number, 0 where missing (None or NaN)."""
    return 0.0 if value is None or math.isnan(value) else float(value)
