"""Hints on out-of-stock items over the real grpc.aio server: in_stock, OUT_OF_STOCK, alternates.

The feature store and the propensity model are adapters swapped for small in-memory ones, so
every expected number is worked out here from the catalogue below and the stated similarity.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from conftest import bad_request_field
from recsvc.adapters.model_holder import Served
from recsvc.app.catalogue import Catalogue
from recsvc.app.dataplane import Dataplane
from recsvc.config import load_programme
from recsvc.metrics import ServiceMetrics
from recsvc.transport.server import create_server, mark_serving
from recsvc.transport.servicer import RedemptionServicer
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc

P = load_programme()
# item: category, points class, points price, stock
ITEMS = {10: ("toys", "base", 800, 0), 11: ("toys", "base", 700, 4),
         12: ("toys", "growth", 900, 2), 13: ("books", "base", 800, 0),
         14: ("books", "luxury", 2000, 7), 15: ("home", "base", 50, 3)}
MEMBER = 7


class TableSource:
    """Online features from the dicts above (the feature source adapter, swapped)."""

    def read_service(self, service: str, entity_key: str,
                     ids: Sequence[int]) -> dict[str, list[Any]]:
        if entity_key == "member_id":
            return {"member_points__points_balance": [5000 for _ in ids],
                    "member_activity__orders_90d": [2.0 for _ in ids]}
        rows = [ITEMS.get(int(i)) for i in ids]
        cols = {"category": [r and r[0] for r in rows], "points_class": [r and r[1] for r in rows],
                "points_price": [r and r[2] for r in rows], "stock": [r and r[3] for r in rows],
                "market_price_minor": [r and r[2] * 10 for r in rows],
                "perceived_discount": [r and 0.9 for r in rows],
                "discount_coefficient": [r and 1.0 for r in rows]}
        return {f"item_catalogue__{k}": v for k, v in cols.items()}


class PriceScorer:
    """A propensity 'model': points price / 10,000 (so 0.2 for the 2,000-point item)."""

    def score_items(self, catalogue: object, item_columns: dict[str, np.ndarray], n_items: int,
                    positions: np.ndarray, member: dict[str, Any], encoded: dict[str, Any],
                    balance: float, surface: str, factors: Any) -> np.ndarray:
        assert surface == "product_page"
        return np.asarray(item_columns["points_price"][positions], dtype=np.float64) / 10_000

    def score_item(self, catalogue: object, item_columns: dict[str, np.ndarray], n_items: int,
                   position: int, member: dict[str, Any], encoded: dict[str, Any],
                   balance: float, surface: str, factors: Any) -> float:
        return float(self.score_items(catalogue, item_columns, n_items, np.array([position]),
                                      member, encoded, balance, surface, factors)[0])


class Holder:
    """The model holder adapter: whatever `current` it is given."""

    def __init__(self, current: Served | None) -> None:
        self.current = current


def expected(item: int, other: int, propensity: float | None) -> float:
    """The similarity of SPEC-issue 7 as recsvc.core.catalogue states it, written out."""
    (c1, k1, p1, _), (c2, k2, p2, _) = ITEMS[item], ITEMS[other]

    def band(p: int) -> int:
        return 0 if p < 100 else 2 if p > 500 else 1

    close = max(0.0, 1 - abs(math.log(p2 / p1)) / math.log(4))
    s = 0.4 * (c1 == c2) + 0.2 * (k1 == k2) + 0.25 * (0.5 * (band(p1) == band(p2)) + 0.5 * close)
    return s + 0.15 * propensity if propensity is not None else s / 0.85


@contextlib.asynccontextmanager
async def served(model: bool = True) -> AsyncIterator[str]:
    """A started, SERVING server over the in-memory catalogue (a propensity model unless not
    `model`); its address."""
    metrics = ServiceMetrics(CollectorRegistry())
    catalogue = Catalogue(TableSource(), lambda: list(ITEMS))
    catalogue.refresh()
    plane = Dataplane(TableSource(), Holder(None), metrics,  # type: ignore[arg-type]
                      programme=P, catalogue=catalogue,
                      propensity=Holder(Served("v-test", PriceScorer()) if model else None))
    server, port, health = await create_server("127.0.0.1:0", RedemptionServicer(plane, metrics))
    try:
        await mark_serving(health)
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


def serve(check: Callable[[Any], Awaitable[None]], model: bool = True) -> None:
    async def main() -> None:
        async with served(model) as address, grpc.aio.insecure_channel(address) as channel:
            await check(recsvc_pb2_grpc.RedemptionServiceStub(channel))

    asyncio.run(main())


def test_an_out_of_stock_item_gets_in_stock_alternates_with_reasons() -> None:
    async def check(stub: Any) -> None:
        got = await stub.BatchGetRedemptionHints(pb.BatchGetRedemptionHintsRequest(
            member_id=MEMBER, item_ids=[10, 11, 13]))
        toys, stocked, books = got.hints
        assert not stocked.alternates and stocked.in_stock
        assert pb.REASON_CODE_OUT_OF_STOCK not in stocked.reasons
        for h in (toys, books):
            assert not h.in_stock and pb.REASON_CODE_OUT_OF_STOCK in h.reasons
            assert 2 <= len(h.alternates) <= 3
            assert all(ITEMS[a.item_id][3] > 0 and a.item_id != h.item_id for a in h.alternates)
            for a in h.alternates:
                assert a.propensity == pytest.approx(ITEMS[a.item_id][2] / 10_000)
                assert a.similarity == pytest.approx(expected(h.item_id, a.item_id,
                                                              a.propensity), abs=1e-12)
                assert a.points_price == ITEMS[a.item_id][2]
                assert a.category == ITEMS[a.item_id][0]
        # toys 800: 11 (same category, class, band, 8/7 the price), 12 (same category and
        # band), then 15 (same class) just ahead of 14 (same band; a propensity of 0.2)
        assert [a.item_id for a in toys.alternates] == [11, 12, 15]
        assert list(toys.alternates[0].reasons) == [
            pb.REASON_CODE_SAME_CATEGORY, pb.REASON_CODE_SAME_POINTS_CLASS,
            pb.REASON_CODE_SIMILAR_POINTS_PRICE]
        assert list(toys.alternates[2].reasons) == [pb.REASON_CODE_SAME_POINTS_CLASS]
        # books 800: 14 (same category, a propensity of 0.2), 11, 12
        assert [a.item_id for a in books.alternates] == [14, 11, 12]
        assert list(books.alternates[0].reasons) == [pb.REASON_CODE_SAME_CATEGORY,
                                                     pb.REASON_CODE_HIGH_PROPENSITY]
        one = await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(member_id=MEMBER,
                                                                       item_id=10))
        assert one.hint.alternates == toys.alternates and not one.hint.in_stock

    serve(check)


def test_without_a_model_alternates_come_from_the_catalogue_alone() -> None:
    async def check(stub: Any) -> None:
        got = await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(member_id=MEMBER,
                                                                       item_id=13))
        assert got.degraded and list(got.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL]
        alts = got.hint.alternates
        assert [a.item_id for a in alts] == [14, 11, 12]
        assert all(not a.HasField("propensity") for a in alts)
        assert [a.similarity for a in alts] == pytest.approx(
            [expected(13, a.item_id, None) for a in alts], abs=1e-12)

    serve(check, model=False)


def test_a_category_the_catalogue_lacks_is_refused_with_the_ones_it_has() -> None:
    async def check(stub: Any) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(
                member_id=MEMBER, filters=pb.RecommendationFilters(categories=["toys", "garden"])))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_field(err.value) == "filters.categories[1]"
        assert err.value.details() == ("filters.categories[1]: no category 'garden'; "
                                       "one of ['books', 'home', 'toys']")

    serve(check)


def test_a_refresh_that_reads_the_same_items_keeps_the_load_and_a_change_replaces_it() -> None:
    """What answers prepare from a load (index factors, the model's item block) is kept by
    identity, so a refresh that changed nothing must keep the load."""
    ids = list(ITEMS)
    catalogue = Catalogue(TableSource(), lambda: ids)
    catalogue.refresh()
    first = catalogue.items
    catalogue.refresh()
    assert catalogue.items is first
    ids = ids[:-1]
    catalogue.refresh()
    assert catalogue.items is not first and len(catalogue.items.position) == len(ITEMS) - 1


class LosingSource(TableSource):
    """The store after a restart that lost some rows (Redis restarted empty, partly filled
    again): no features for the items in `lost`."""

    def __init__(self) -> None:
        self.lost: set[int] = set()

    def read_service(self, service: str, entity_key: str,
                     ids: Sequence[int]) -> dict[str, list[Any]]:
        got = super().read_service(service, entity_key, ids)
        return {k: [None if int(i) in self.lost else v for i, v in zip(ids, values, strict=True)]
                for k, values in got.items()}


def test_a_store_that_lost_its_rows_does_not_take_the_catalogue_with_it(caplog) -> None:
    source = LosingSource()
    catalogue = Catalogue(source, lambda: list(ITEMS))
    catalogue.refresh()
    first = catalogue.items
    source.lost = set(ITEMS)  # everything gone: the last load stays, whole
    assert catalogue.refresh() == len(ITEMS)
    assert catalogue.items is first
    assert "no features for 6 of 6 items" in caplog.text
    source.lost = {10}  # partly back, one item's row changed: that change is taken
    saved = dict(ITEMS)
    try:
        ITEMS[11] = ("toys", "base", 650, 4)
        catalogue.refresh()
        items = catalogue.items
        assert items is not first and len(items.position) == len(ITEMS)
        assert items.core.points_price[items.position[11]] == 650
        assert items.core.points_price[items.position[10]] == 800  # the last one read
    finally:
        ITEMS.clear()
        ITEMS.update(saved)
    # an item never seen, missing from the store, is still left out
    fresh = Catalogue(source, lambda: list(ITEMS))
    fresh.refresh()
    assert 10 not in fresh.items.position and len(fresh.items.position) == len(ITEMS) - 1


def test_a_full_collection_freezes_what_survived_it_and_a_sweep_unfreezes_all() -> None:
    import gc

    from recsvc.transport import main

    before = list(gc.callbacks)
    try:
        main.freeze_after_full_collections()
        main.freeze_after_full_collections()  # once only
        assert len(gc.callbacks) == len(before) + 1
        # no sweep due yet, however long ago this process imported main (a long suite)
        main._freezer.swept = time.monotonic()
        kept = [[k] for k in range(1000)]  # survives the collection
        gc.unfreeze()
        gc.collect(1)
        assert gc.get_freeze_count() == 0  # a young collection freezes nothing
        gc.collect()
        assert gc.get_freeze_count() >= len(kept)
        main._freezer.swept -= main.SWEEP_SECONDS  # a sweep is due: this collection's
        gc.collect()  # survivors go back to the collector, and the next one walks them
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.callbacks[:] = before
        gc.unfreeze()


def test_a_refresh_that_meets_the_store_away_warns_in_one_line_and_tries_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis loading its file or restarting is expected: the refresh loop logs a warning with
    the store's message (no traceback) and refreshes again on its next turn."""
    import logging

    from recsvc.errors import FeatureStoreUnavailable
    from recsvc.transport.server import refresh_models

    class Away:
        calls = 0

        def refresh(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise FeatureStoreUnavailable("Redis is loading the dataset in memory")
            return 1

    away = Away()

    async def main() -> None:
        task = asyncio.create_task(refresh_models([], away, 0.01))  # type: ignore[arg-type]
        while away.calls < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="recsvc.transport.server"):
        asyncio.run(main())
    [record] = [r for r in caplog.records if "catalogue" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "Redis is loading the dataset in memory" in record.getMessage()
