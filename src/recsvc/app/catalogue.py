"""The catalogue held in memory: every item's features as columns, reloaded in the background and
swapped in whole (`Catalogue`), and what answers compute once a load (`Prepared`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.app.ports import FeatureSource
from recsvc.config import Programme
from recsvc.core import catalogue as core_catalogue
from recsvc.core import index as idx
from recsvc.core import ranking, redemption
from recsvc.data.views import is_feature
from recsvc.ml import inputs

log = logging.getLogger(__name__)


def read_columns(raw: Mapping[str, list[Any]], n: int) -> tuple[dict[str, Any], np.ndarray]:
    """Feature columns by feature name, and which rows have no features at all (unknown
    members: cold start; items the store does not know)."""
    present = np.zeros(n, dtype=bool)
    for name, values in raw.items():
        if is_feature(name):
            present |= np.asarray(values, dtype=object) != None  # noqa: E711 - element-wise
            if present.all():  # the usual batch: every member known after the first column
                break
    return inputs.feature_columns(raw), ~present


def _keep_lost_rows(ids: list[int], raw: Mapping[str, list[Any]], old_ids: list[int],
                    old: Mapping[str, list[Any]]) -> tuple[Mapping[str, list[Any]], int]:
    """`raw` with the rows it lacks (every feature None) taken from `old` where `old` had
    them, and how many were taken."""
    features = [name for name in raw if is_feature(name)]
    if not features or set(features) != {name for name in old if is_feature(name)}:
        return raw, 0
    before = {item: k for k, item in enumerate(old_ids)}
    out = {name: list(values) for name, values in raw.items()}
    kept = 0
    for k, item in enumerate(ids):
        j = before.get(item)
        if j is None or any(raw[name][k] is not None for name in features):
            continue
        if all(old[name][j] is None for name in features):
            continue
        for name in features:
            out[name][k] = old[name][j]
        kept += 1
    return (out, kept) if kept else (raw, 0)


@dataclass(frozen=True)
class Items:
    """One load of the catalogue: every item's features as columns (by feature name, in
    `core.item_id` order), the arrays the ranking core works on, and what the alternates'
    similarity looks at (prepared here, once a load, not per hint)."""

    position: dict[int, int]
    columns: dict[str, npt.NDArray[Any]]
    core: ranking.Catalogue
    similar: core_catalogue.Attributes

    @classmethod
    def build(cls, ids: Sequence[int], raw: Mapping[str, list[Any]]) -> Items:
        cols, missing = read_columns(raw, len(ids))
        keep = np.flatnonzero(~missing)
        cols = {k: v[keep] for k, v in cols.items()}
        item_id = np.asarray(ids, dtype=np.int64)[keep]
        n = len(keep)

        def num(name: str, default: float) -> npt.NDArray[np.float64]:
            return np.nan_to_num(cols.get(name, np.full(n, np.nan)), nan=default)

        core = ranking.Catalogue(
            item_id=item_id,
            category=cols.get("category", np.full(n, None, dtype=object)),
            points_price=num("points_price", 0).astype(np.int64),
            market_price_minor=num("market_price_minor", 0).astype(np.int64),
            perceived_discount=num("perceived_discount", 1.0),
            discount_coefficient=num("discount_coefficient", 1.0),
            stock=num("stock", 0).astype(np.int64))
        similar = core_catalogue.Attributes.build(
            item_id, core.category, cols.get("points_class", np.full(n, None, dtype=object)),
            core.points_price, core.stock)
        return cls({int(i): k for k, i in enumerate(item_id)}, cols, core, similar)

    def take(self, positions: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[Any]]:
        return {name: values[positions] for name, values in self.columns.items()}


class Catalogue:
    """Every item's features in memory, so answers never wait on the store for item data and
    keep coming while it is down; `refresh()` reloads them (in the background) and swaps the
    new `Items` in whole, so a request sees one load throughout."""

    def __init__(self, features: FeatureSource, item_ids: Any) -> None:
        self.features = features
        self.item_ids = item_ids  # () -> list of ids
        self.items = Items.build([], {})
        self._loaded: tuple[list[int], Mapping[str, list[Any]]] | None = None

    def refresh(self) -> int:
        """Reload; the same `Items` stay when nothing changed, so what answers prepare from a
        load (`Dataplane.prepare`) is kept. An item the store has no row for now but had one
        for at the last load keeps that row: a store that lost its data (Redis restarted
        empty, not yet materialised again) must not take the catalogue with it."""
        ids = [int(i) for i in self.item_ids()]
        raw = self.features.read_service("propensity_v1", "item_id", ids)
        if self._loaded is not None:
            raw, kept = _keep_lost_rows(ids, raw, *self._loaded)
            if kept:
                log.warning("catalogue refresh: the online store has no features for %d of %d "
                            "items it had; serving their last features read until it has",
                            kept, len(ids))
        if (ids, raw) != self._loaded:
            self.items = Items.build(ids, raw)
            self._loaded = (ids, raw)
        return len(self.items.position)


@dataclass(frozen=True)
class Prepared:
    """What answers take from one catalogue load and the programme, computed once a load:
    the items' index factors, and each item's values as plain numbers for one-item hints
    (reading one value out of a numpy array costs more than the arithmetic done with it)."""

    items: Items
    factors: idx.ItemFactors
    item_id: list[int]
    points_price: list[int]
    discount: list[float]
    cash_price: list[int]
    in_stock: list[bool]
    value_coefficient: list[float]
    vacuum: list[bool]

    @classmethod
    def build(cls, programme: Programme, items: Items) -> Prepared:
        c = items.core
        f = ranking.item_factors(programme, c)
        return cls(items, f, c.item_id.tolist(), c.points_price.tolist(),
                   c.discount_coefficient.tolist(),
                   redemption.cash_price(c.market_price_minor, c.discount_coefficient).tolist(),
                   (c.stock > 0).tolist(), f.value_coefficient.tolist(), f.vacuum.tolist())
