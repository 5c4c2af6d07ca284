"""The ports the application reads and writes through: the adapters implement them (by shape:
nothing here is imported by them), tests swap in their own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from recsvc.core.index import IndexFactors
from recsvc.core.nudges import CapOutcome, Reservation


class FeatureSource(Protocol):
    """Online features of a feature service for entity ids: {"<view>__<feature>": values}."""

    def read_service(
        self, service: str, entity_key: str, ids: Sequence[int]
    ) -> Mapping[str, list[Any]]: ...


class PropensityModel(Protocol):
    """P(redeem within 7 days) of one member for catalogue items (ml.scoring's
    PropensityScorer; tests swap in their own)."""

    def score_items(self, catalogue: object, item_columns: Mapping[str, Any], n_items: int,
                    positions: npt.NDArray[np.int64], member: Mapping[str, Any],
                    encoded: dict[str, npt.NDArray[np.float64]], balance: float, surface: str,
                    factors: IndexFactors) -> npt.NDArray[np.float64]: ...

    def score_item(self, catalogue: object, item_columns: Mapping[str, Any], n_items: int,
                   position: int, member: Mapping[str, Any],
                   encoded: dict[str, npt.NDArray[np.float64]], balance: float, surface: str,
                   factors: IndexFactors) -> float: ...


class CapStore(Protocol):
    """Counts the nudges delivered to members, per cap, over sliding windows."""

    def reserve(self, member_id: int, reservations: Sequence[Reservation], now: dt.datetime,
                *, dry_run: bool = False) -> list[CapOutcome]:
        """The outcome of each reservation, in order (`core.nudges.decide`), recording the
        granted ones unless `dry_run`; atomic per call. Raises CapStoreUnavailable."""
        ...

    async def reserve_async(self, member_id: int, reservations: Sequence[Reservation],
                            now: dt.datetime, *, dry_run: bool = False) -> list[CapOutcome]:
        """`reserve` for a caller on an event loop (the grpc.aio service): the store is
        waited on off the loop."""
        ...

    def close(self) -> None: ...
