"""The real grpc.aio server on port 0: churn RPCs, errors, degraded answers, model hot swap."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from conftest import bad_request_field
from recsvc.adapters import feast as fstore
from recsvc.adapters.feature_sources import FeastSource
from recsvc.adapters.model_holder import ModelHolder, Served
from recsvc.app.catalogue import Catalogue
from recsvc.app.dataplane import Dataplane
from recsvc.errors import FeatureStoreUnavailable
from recsvc.metrics import ServiceMetrics
from recsvc.ml import inputs
from recsvc.ml.scoring import ChurnScorer
from recsvc.offline.batch_scoring import features_as_of
from recsvc.transport import converters
from recsvc.transport.server import create_server, drain, mark_serving
from recsvc.transport.servicer import RedemptionServicer
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc


class DownSource:
    """A feature source whose store does not answer (an adapter swapped in, no patching)."""

    def read_service(self, service: str, entity_key: str, ids: Sequence[int]) -> dict:
        raise FeatureStoreUnavailable("Redis did not answer within 50 ms")


def _holder(ctx: Any, metrics: ServiceMetrics) -> ModelHolder:
    holder = ModelHolder("churn", ctx.registry, ChurnScorer, metrics, ctx.known_features)
    holder.refresh()
    return holder


def _serve(ctx: Any, check: Callable[[Any, Any, ServiceMetrics, CollectorRegistry],
                                     Awaitable[None]],
           source: Any = None, with_model: bool = True) -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        metrics = ServiceMetrics(registry)
        holder = ModelHolder("churn", ctx.registry, ChurnScorer, metrics, ctx.known_features)
        if with_model:
            holder.refresh()
        plane = _plane(ctx, source or FeastSource(ctx.store), holder, metrics, with_model)
        server, port, health = await create_server("127.0.0.1:0", RedemptionServicer(plane,
                                                                                    metrics))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                probe = health_pb2_grpc.HealthStub(channel)
                status = await probe.Check(health_pb2.HealthCheckRequest())
                assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
                await mark_serving(health)
                status = await probe.Check(health_pb2.HealthCheckRequest())
                assert status.status == health_pb2.HealthCheckResponse.SERVING
                await check(recsvc_pb2_grpc.RedemptionServiceStub(channel), holder, metrics,
                            registry)
        finally:
            await server.stop(grace=None)

    asyncio.run(main())


def _plane(ctx: Any, source: Any, churn: ModelHolder, metrics: ServiceMetrics,
           with_model: bool) -> Dataplane:
    """The dataplane with hints: the catalogue loaded through the real store first (as the
    service does at start), so a store that goes down later still leaves item data."""
    from recsvc.data import schema
    from recsvc.ml.scoring import PropensityScorer

    propensity = ModelHolder("propensity", ctx.registry,
                             lambda loaded: PropensityScorer(loaded, ctx.programme),
                             metrics, ctx.known_features)
    if with_model:
        propensity.refresh()
    catalogue = Catalogue(FeastSource(ctx.store), schema.read_table(
        ctx.settings.data_dir, "items", ["item_id"])["item_id"].to_pylist)
    catalogue.refresh()
    # the simulated world stops at the features' as-of: that is "now" for lapsing points
    now = features_as_of(ctx.settings.data_dir).timestamp()
    return Dataplane(source, churn, metrics, programme=ctx.programme, propensity=propensity,
                     catalogue=catalogue, clock=lambda: now)


def _items(ctx: Any) -> list[int]:
    from recsvc.data import schema

    return [int(i) for i in schema.read_table(ctx.settings.data_dir, "items",
                                              ["item_id"])["item_id"].to_numpy()]


def _sample(ctx: Any) -> list[int]:
    from recsvc.data import schema

    members = schema.read_table(ctx.settings.data_dir, "members", ["member_id"])
    return [int(m) for m in members["member_id"].to_numpy()[:20]]


def test_churn_risk_over_grpc_matches_the_scorer(trained: Any) -> None:
    ids = _sample(trained)

    async def check(stub: Any, holder: ModelHolder, _: Any, registry: CollectorRegistry) -> None:
        one = await stub.GetChurnRisk(pb.GetChurnRiskRequest(member_id=ids[0]))
        assert not one.degraded and one.model_version == holder.current.version
        assert len(one.risk.drivers) == 3 and one.risk.action.code
        batch = await stub.BatchGetChurnRisk(pb.BatchGetChurnRiskRequest(
            member_ids=[*ids, 10**9]))
        assert [r.member_id for r in batch.risks] == [*ids, 10**9]  # request order
        # the probabilities say what they are about: the served version's horizon
        horizon = trained.registry.load("churn").manifest.extra["horizon_days"]
        assert one.horizon_days == batch.horizon_days == horizon == 90
        assert batch.risks[-1].cold_start and not batch.risks[0].cold_start
        # the same numbers as the scorer on the same online features
        online = fstore.online_features(trained.store, "churn_v1",
                                        [{"member_id": m} for m in ids])
        expected = holder.current.scorer.score(inputs.feature_columns(online)).probability
        np.testing.assert_allclose([r.probability for r in batch.risks[:-1]], expected,
                                   atol=1e-9)
        assert registry.get_sample_value("recsvc_requests_total",
                                         {"rpc": "BatchGetChurnRisk", "code": "OK"}) == 1
        assert registry.get_sample_value("recsvc_model_info", {
            "model": "churn", "version": holder.current.version}) == 1
        created = trained.registry.load("churn").manifest.created_at.timestamp()
        assert registry.get_sample_value("recsvc_model_created_timestamp_seconds",
                                         {"model": "churn"}) == created

    _serve(trained, check)


def test_bad_input_is_invalid_argument_naming_the_field(trained: Any) -> None:
    item = _items(trained)[0]
    line = pb.CartLine(item_id=1, unit_price_minor=1000, quantity=1, points_eligible=True)

    async def check(stub: Any, *_: Any) -> None:
        churn, rec, cart = stub.BatchGetChurnRisk, stub.RecommendRedemptions, \
            stub.OptimizeCartSplit
        for call, request, field in (
            (churn, pb.BatchGetChurnRiskRequest(member_ids=[]), "member_ids"),
            (churn, pb.BatchGetChurnRiskRequest(member_ids=range(1001)), "member_ids"),
            (churn, pb.BatchGetChurnRiskRequest(member_ids=[1, -5]), "member_ids[1]"),
            (stub.BatchGetRedemptionHints,
             pb.BatchGetRedemptionHintsRequest(member_id=1, item_ids=[item] * 101), "item_ids"),
            (stub.GetRedemptionHint, pb.GetRedemptionHintRequest(
                member_id=1, item_id=item, context=pb.RequestContext(points_balance=-1)),
             "context.points_balance"),
            (rec, pb.RecommendRedemptionsRequest(member_id=1, limit=201), "limit"),
            (rec, pb.RecommendRedemptionsRequest(member_id=-1), "member_id"),
            (rec, pb.RecommendRedemptionsRequest(
                member_id=1, filters=pb.RecommendationFilters(categories=["no such"])),
             "filters.categories[0]"),
            (rec, pb.RecommendRedemptionsRequest(
                member_id=1, context=pb.RequestContext(experiment_arm="nope")),
             "context.experiment_arm"),
            (cart, pb.OptimizeCartSplitRequest(member_id=1), "lines"),
            (cart, pb.OptimizeCartSplitRequest(member_id=1, lines=[line] * 501), "lines"),
            (cart, pb.OptimizeCartSplitRequest(member_id=1, lines=[
                line, pb.CartLine(item_id=2, unit_price_minor=100, quantity=0)]),
             "lines[1].quantity"),
            (cart, pb.OptimizeCartSplitRequest(member_id=1, lines=[
                pb.CartLine(item_id=2, unit_price_minor=-100, quantity=1)]),
             "lines[0].unit_price_minor"),
            # what proto3 lets any caller send: open enums, int64 extremes, NUL, long text
            (stub.GetRedemptionHint, pb.GetRedemptionHintRequest(
                member_id=1, item_id=item, context=pb.RequestContext(surface=999)),
             "context.surface"),
            (stub.GetNudges, pb.GetNudgesRequest(member_id=1, channel=-3), "channel"),
            (stub.GetRedemptionHint, pb.GetRedemptionHintRequest(member_id=1, item_id=-7),
             "item_id"),
            (stub.GetChurnRisk, pb.GetChurnRiskRequest(member_id=-5), "member_id"),
            (rec, pb.RecommendRedemptionsRequest(member_id=2**63 - 1), "member_id"),
            (stub.BatchGetRedemptionHints, pb.BatchGetRedemptionHintsRequest(
                member_id=1, item_ids=[item, -2**63]), "item_ids[1]"),
            (cart, pb.OptimizeCartSplitRequest(member_id=1, lines=[
                line, pb.CartLine(item_id=2, unit_price_minor=2**62, quantity=2**62)]),
             "lines[1].unit_price_minor"),
            (cart, pb.OptimizeCartSplitRequest(member_id=1, lines=[
                pb.CartLine(item_id=2, unit_price_minor=100, quantity=2**32)]),
             "lines[0].quantity"),
            (rec, pb.RecommendRedemptionsRequest(
                member_id=1, context=pb.RequestContext(experiment_arm="a\x00b")),
             "context.experiment_arm"),
            (rec, pb.RecommendRedemptionsRequest(
                member_id=1, filters=pb.RecommendationFilters(categories=["x" * 65])),
             "filters.categories[0]"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert bad_request_field(err.value) == field
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(member_id=1,
                                                                     item_id=999_999_999))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details().startswith("item_id: no item 999999999")  # its own field

    _serve(trained, check)


def test_an_unset_id_is_invalid_argument_naming_the_field_on_every_rpc(trained: Any) -> None:
    """Ids start at 1: proto3 sends an id the caller did not set as 0, so 0 is refused naming
    the field, on every RPC and inside repeated fields; an empty request is never answered
    as if for member 0 and item 0."""
    member, item = _sample(trained)[0], _items(trained)[0]
    line = pb.CartLine(item_id=item, unit_price_minor=1000, quantity=1, points_eligible=True)
    calls = [
        ("GetRedemptionHint", pb.GetRedemptionHintRequest(), "member_id"),
        ("GetRedemptionHint", pb.GetRedemptionHintRequest(member_id=member), "item_id"),
        ("BatchGetRedemptionHints", pb.BatchGetRedemptionHintsRequest(item_ids=[item]),
         "member_id"),
        ("BatchGetRedemptionHints", pb.BatchGetRedemptionHintsRequest(
            member_id=member, item_ids=[item, item, item, 0]), "item_ids[3]"),
        ("RecommendRedemptions", pb.RecommendRedemptionsRequest(), "member_id"),
        ("OptimizeCartSplit", pb.OptimizeCartSplitRequest(lines=[line]), "member_id"),
        ("OptimizeCartSplit", pb.OptimizeCartSplitRequest(member_id=member, lines=[
            line, pb.CartLine(unit_price_minor=100, quantity=1)]), "lines[1].item_id"),
        ("GetChurnRisk", pb.GetChurnRiskRequest(), "member_id"),
        ("BatchGetChurnRisk", pb.BatchGetChurnRiskRequest(member_ids=[member, 0]),
         "member_ids[1]"),
        ("GetNudges", pb.GetNudgesRequest(channel=pb.CHANNEL_PUSH), "member_id"),
    ]
    rpcs = pb.DESCRIPTOR.services_by_name["RedemptionService"].methods_by_name
    assert {rpc for rpc, *_ in calls} == set(rpcs)

    async def check(stub: Any, *_: Any) -> None:
        for rpc, request, field in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await getattr(stub, rpc)(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, field)
            assert bad_request_field(err.value) == field, rpc
            assert err.value.details().startswith(f"{field}: must be set: ids start at 1")
        # the same requests with the id set are answered
        assert (await stub.GetChurnRisk(pb.GetChurnRiskRequest(member_id=member))).risk
        got = await stub.BatchGetRedemptionHints(pb.BatchGetRedemptionHintsRequest(
            member_id=member, item_ids=[item, item, item, item]))
        assert [h.item_id for h in got.hints] == [item] * 4

    _serve(trained, check)


def test_store_down_or_no_model_degrades_instead_of_failing(trained: Any) -> None:
    ids = _sample(trained)[:3]

    async def down(stub: Any, _: Any, __: Any, registry: CollectorRegistry) -> None:
        got = await stub.BatchGetChurnRisk(pb.BatchGetChurnRiskRequest(member_ids=ids))
        assert got.degraded and list(got.degraded_reasons) == [
            pb.DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE]
        assert all(r.cold_start for r in got.risks) and len(got.risks) == 3
        assert registry.get_sample_value("recsvc_degraded_answers_total", {
            "rpc": "BatchGetChurnRisk", "reason": "feature_store_unavailable"}) == 1

    _serve(trained, down, source=DownSource())

    async def no_model(stub: Any, *_: Any) -> None:
        got = await stub.GetChurnRisk(pb.GetChurnRiskRequest(member_id=ids[0]))
        assert got.degraded and list(got.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL]
        assert got.risk.band == pb.RISK_BAND_MEDIUM and got.model_version == ""

    _serve(trained, no_model, with_model=False)


def test_a_promoted_version_is_swapped_in_and_a_broken_one_refused(trained: Any) -> None:
    reg = trained.registry
    metrics = ServiceMetrics(CollectorRegistry())
    holder = _holder(trained, metrics)
    serving = holder.current.version
    loaded = reg.load("churn")
    manifest = loaded.manifest

    def register_again() -> Any:
        return reg.register(
            "churn", loaded.booster, feature_service=manifest.feature_service,
            training_window=(manifest.training_window.start, manifest.training_window.end),
            data_fingerprint=manifest.data_fingerprint, metrics=manifest.metrics,
            baseline_metrics=manifest.baseline_metrics,
            derived_features=manifest.derived_features, extra=dict(manifest.extra))

    fresh = register_again()
    reg.promote("churn", fresh.version, force=True)
    assert holder.refresh() and holder.current.version == fresh.version
    # a broken artefact in production: refused, the previous version keeps serving
    broken = register_again()
    reg.promote("churn", broken.version, force=True)
    model_file = reg.store.path(f"churn/{broken.version}/{broken.model_file}")
    model_file.write_bytes(model_file.read_bytes()[:200])
    assert not holder.refresh()
    assert holder.current.version == fresh.version
    reg.rollback("churn")  # leave production as the other tests expect it
    reg.rollback("churn")
    assert reg.production("churn") == serving


def test_redemption_hints_over_grpc(trained: Any) -> None:
    from recsvc.core import index as idx
    from recsvc.data import schema

    member = _sample(trained)[3]
    items = [int(i) for i in schema.read_table(trained.settings.data_dir, "items",
                                               ["item_id"])["item_id"].to_numpy()[:5]]

    async def check(stub: Any, _: Any, __: Any, registry: CollectorRegistry) -> None:
        ctx = pb.RequestContext(surface=pb.SURFACE_PRODUCT_PAGE, points_balance=640)
        got = await stub.BatchGetRedemptionHints(pb.BatchGetRedemptionHintsRequest(
            member_id=member, item_ids=items, context=ctx))
        assert [h.item_id for h in got.hints] == items and not got.degraded
        assert got.experiment_arm in {"control", "propensity_heavy"}
        assert got.model_version == trained.registry.production("propensity")
        online = fstore.online_features(trained.store, "propensity_v1",
                                        [{"member_id": member, "item_id": i} for i in items])
        for k, h in enumerate(got.hints):
            f = idx.index_factors(
                trained.programme.index,
                market_price=online["item_catalogue__market_price_minor"][k] / 100,
                perceived_discount=online["item_catalogue__perceived_discount"][k],
                points_price=online["item_catalogue__points_price"][k],
                item_discount=online["item_catalogue__discount_coefficient"][k], balance=640,
                orders_90d=online["member_activity__orders_90d"][k] or 0,
                days_since_last_order=online["member_activity__days_since_last_order"][k]
                or float("inf"),
                young=online["member_activity__age_band"][k] in ("18-24",),
                high_spender=(online["member_activity__avg_order_value_365d_minor"][k] or 0)
                >= 30_000)
            assert h.factors.value_coefficient == pytest.approx(f.value_coefficient, abs=1e-12)
            assert h.factors.recommendation_index == pytest.approx(f.recommendation_index,
                                                                   abs=1e-12)
            assert h.points_better == (h.factors.recommendation_index > h.threshold)
            assert h.affordable == (h.points_price <= 640)
            assert h.points_gap == max(h.points_price - 640, 0)
            assert 0.0 < h.propensity < 1.0
        forced = await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(
            member_id=member, item_id=items[0],
            context=pb.RequestContext(experiment_arm="control", points_balance=640)))
        assert forced.experiment_arm == "control" and forced.hint.threshold == 0.06
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(member_id=member,
                                                                     item_id=10**9))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.BatchGetRedemptionHints(pb.BatchGetRedemptionHintsRequest(
                member_id=member, item_ids=list(range(101))))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        shown = sum(registry.get_sample_value("recsvc_hints_total", {
            "arm": a, "points_better": b}) or 0 for a in ("control", "propensity_heavy")
            for b in ("true", "false"))
        assert shown == len(items) + 1

    _serve(trained, check)

    async def down(stub: Any, *_: Any) -> None:
        got = await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(
            member_id=member, item_id=items[0]))
        # item data comes from the in-memory catalogue; the member is a cold start
        assert got.degraded and pb.DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE in \
            got.degraded_reasons
        assert pb.REASON_CODE_COLD_START in got.hint.reasons and got.hint.points_price > 0

    _serve(trained, down, source=DownSource())


def _rich_member(ctx: Any) -> tuple[int, dict[str, Any]]:
    """A member with points in several lots, and their online features (redemption_v1)."""
    ids = _sample(ctx)[:20]
    online = fstore.online_features(ctx.store, "redemption_v1", [{"member_id": m} for m in ids])
    k = max(range(len(ids)), key=lambda i: len(online["member_expiry__expiry_points"][i] or []))
    assert len(online["member_expiry__expiry_points"][k]) >= 2
    return ids[k], {name: values[k] for name, values in online.items()}


def test_recommendations_over_grpc(trained: Any) -> None:
    from recsvc.core import index as idx

    member, f = _rich_member(trained)
    balance = f["member_points__points_balance"]
    ids = _items(trained)
    catalogue = FeastSource(trained.store).read_service("propensity_v1", "item_id", ids)
    stock = dict(zip(ids, catalogue["item_catalogue__stock"], strict=True))

    async def check(stub: Any, *_: Any) -> None:
        got = await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(
            member_id=member, limit=200))
        assert not got.degraded and 0 < len(got.options) <= 200
        assert got.model_version == trained.registry.production("propensity")
        assert [o.rank for o in got.options] == list(range(1, len(got.options) + 1))
        assert [o.score for o in got.options] == sorted((o.score for o in got.options),
                                                        reverse=True)
        assert all(stock[o.item_id] > 0 for o in got.options)  # never out of stock
        assert got.points_balance == balance
        assert got.expiring_points == f["member_points__points_expiring_30d"]
        assert got.next_expiry.ToSeconds() == f["member_expiry__expiry_at_s"][0]
        heavy = got.experiment_arm == "propensity_heavy"
        for o in got.options:
            assert 0.0 < o.propensity < 1.0
            assert o.points_gap == max(o.points_price - balance, 0)
            weight = 2.0 if heavy else 1.0
            assert o.score == pytest.approx(
                o.factors.recommendation_index * o.propensity ** weight, rel=1e-12)
        # the factors are the core's, from the online features
        first = got.options[0]
        k = ids.index(first.item_id)
        want = idx.index_factors(
            trained.programme.index,
            market_price=catalogue["item_catalogue__market_price_minor"][k] / 100,
            perceived_discount=catalogue["item_catalogue__perceived_discount"][k],
            points_price=catalogue["item_catalogue__points_price"][k],
            item_discount=catalogue["item_catalogue__discount_coefficient"][k], balance=balance,
            orders_90d=f["member_activity__orders_90d"] or 0,
            days_since_last_order=f["member_activity__days_since_last_order"] or float("inf"),
            young=f["member_activity__age_band"] in ("18-24",),
            high_spender=(f["member_activity__avg_order_value_365d_minor"] or 0) >= 30_000)
        assert first.factors.recommendation_index == pytest.approx(want.recommendation_index,
                                                                   abs=1e-12)
        # filters: a category, a price cap, affordable only, a live balance from the caller
        category = first.category
        some = await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(
            member_id=member, limit=5, filters=pb.RecommendationFilters(
                categories=[category], max_points_price=first.points_price,
                affordable_only=True), context=pb.RequestContext(points_balance=10**6)))
        assert 0 < len(some.options) <= 5 and some.points_balance == 10**6
        assert all(o.category == category and o.points_price <= first.points_price
                   and o.points_gap == 0 for o in some.options)
        poor = await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(
            member_id=member, context=pb.RequestContext(points_balance=1500)))
        assert len(poor.options) == 20  # the default limit
        assert [(u.category, u.points_gap) for u in poor.unlocks] == [("kitchenware", 500)]
        assert poor.unlocks[0].spend_to_unlock_minor > 0
        assert all(pb.REASON_CODE_COLD_START not in o.reasons for o in got.options)
        # a member the store does not know: a real ranking, as the programme's default member
        # (ready to spend cold_start_points_demand points), every option saying cold start;
        # the answer's balance and gaps stay the real (empty) balance
        demand = trained.programme.index.cold_start_points_demand
        cold = await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(
            member_id=10**12, limit=50))
        assert len(cold.options) == 50 and cold.points_balance == 0 and not cold.degraded
        assert all(pb.REASON_CODE_COLD_START in o.reasons for o in cold.options)
        assert all(o.score > 0 and 0 < o.propensity < 1 for o in cold.options)
        assert [o.score for o in cold.options] == sorted((o.score for o in cold.options),
                                                         reverse=True)
        assert [o.item_id for o in cold.options] != sorted(o.item_id for o in cold.options)
        assert all(o.points_gap == o.points_price for o in cold.options)
        top = cold.options[0]
        assert top.factors.demand_match == pytest.approx(
            min(top.points_price, demand) / max(top.points_price, demand), rel=1e-12)
        # with a live balance from the caller, that balance is the demand
        rich = await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(
            member_id=10**12, limit=5, context=pb.RequestContext(points_balance=5000)))
        assert rich.points_balance == 5000
        assert all(pb.REASON_CODE_COLD_START in o.reasons for o in rich.options)
        assert rich.options[0].factors.demand_match == pytest.approx(
            min(rich.options[0].points_price, 5000) / max(rich.options[0].points_price, 5000))

    _serve(trained, check)

    async def degraded(stub: Any, *_: Any) -> None:
        got = await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(member_id=member))
        assert got.degraded and list(got.degraded_reasons) == [pb.DEGRADED_REASON_NO_MODEL]
        assert got.options and all(not o.HasField("propensity") for o in got.options)
        # index-only ranking
        assert [o.score for o in got.options] == [o.factors.recommendation_index
                                                  for o in got.options]

    _serve(trained, degraded, with_model=False)


def test_cart_split_over_grpc(trained: Any) -> None:
    import datetime as dt

    from recsvc.core import cart

    member, f = _rich_member(trained)
    balance = f["member_points__points_balance"]
    lots = list(zip(f["member_expiry__expiry_at_s"], f["member_expiry__expiry_points"],
                    strict=True))
    lines = [pb.CartLine(item_id=1, unit_price_minor=12_345, quantity=3, points_eligible=True),
             pb.CartLine(item_id=2, unit_price_minor=9_990, quantity=1, points_eligible=False),
             pb.CartLine(item_id=3, unit_price_minor=50_000, quantity=2, points_eligible=True)]

    async def check(stub: Any, _: Any, __: Any, registry: CollectorRegistry) -> None:
        got = await stub.OptimizeCartSplit(pb.OptimizeCartSplitRequest(member_id=member,
                                                                       lines=lines))
        assert not got.degraded
        # exactly the core's answer on the member's lots, reconciled with the balance
        now = features_as_of(trained.settings.data_dir)
        want = cart.optimize_cart(
            trained.programme, [cart.CartLine(x.item_id, x.unit_price_minor, x.quantity,
                                              x.points_eligible) for x in lines],
            cart.PointsBalance.reconcile(lots, balance, now, same_snapshot=True),
            keep_value_per_point=None)
        assert (got.points_used, got.cash_minor, got.order_total_minor) == (
            want.points_used, want.cash_minor, want.order_total_minor)
        assert got.points_value_minor + got.cash_minor == got.order_total_minor
        assert got.order_total_minor == 3 * 12_345 + 9_990 + 2 * 50_000
        assert sum(a.points for a in got.lines) == got.points_used
        assert got.lines[1].points == 0  # not eligible
        assert [(b.expires_at.ToDatetime(dt.UTC), b.points) for b in got.buckets] == [
            (w, p) for w, p in want.buckets_used]
        expiries = [b.expires_at.ToSeconds() for b in got.buckets]
        assert expiries == sorted(expiries) and expiries[0] == lots[0][0]  # earliest first
        assert got.binding_rule == converters.BINDING[want.binding_rule]
        counted = sum(registry.get_sample_value("recsvc_cart_points_recommended_total", {
            "arm": a, "binding_rule": want.binding_rule}) or 0
            for a in ("control", "propensity_heavy"))
        assert counted == got.points_used
        # a live balance from the cart: points the lots do not hold are burnt last, undated
        rich = await stub.OptimizeCartSplit(pb.OptimizeCartSplitRequest(
            member_id=member, lines=lines,
            context=pb.RequestContext(points_balance=balance + 100_000)))
        assert rich.points_used >= got.points_used
        if rich.points_used > sum(p for _, p in lots):
            assert not rich.buckets[-1].HasField("expires_at")
        # cash deduction is worth 0.01 per point; a wanted item at more makes keeping pay
        if rich.keep_points:
            assert "Consider keeping the points" in rich.advice

    _serve(trained, check)

    async def down(stub: Any, *_: Any) -> None:
        got = await stub.OptimizeCartSplit(pb.OptimizeCartSplitRequest(
            member_id=member, lines=lines, context=pb.RequestContext(points_balance=2_000)))
        # no lots known: the caller's balance is used, of unknown lapse; the rules still hold
        assert got.degraded and got.points_used == 2_000
        assert got.points_value_minor + got.cash_minor == got.order_total_minor

    _serve(trained, down, source=DownSource())


class SlowModel:
    """The churn model taking `delay` seconds of the event loop per call, as a long
    CPU-bound answer does (counting its calls): what calls queue behind."""

    def __init__(self, delay: float) -> None:
        self.inner: Any = None  # the real model, set when the server loads it
        self.delay, self.calls = delay, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.score(*args, **kwargs)


def _serve_threads(ctx: Any, slow: SlowModel, overload_lag_s: float | None,
                   calls: Callable[[Any], list[Any]], source: Any = None,
                   ) -> tuple[list[Any], CollectorRegistry]:
    """Serve on this thread's loop, with `slow` wrapping the churn model, while
    `calls(sync_stub)` runs in another thread (so that a request blocking the server does not
    block its callers); returns what it returned."""
    async def main() -> tuple[list[Any], CollectorRegistry]:
        registry = CollectorRegistry()
        metrics = ServiceMetrics(registry)
        holder = _holder(ctx, metrics)
        assert holder.current is not None
        slow.inner = holder.current.scorer
        holder.current = Served(holder.current.version, slow)
        plane = _plane(ctx, source or FeastSource(ctx.store), holder, metrics, True)
        server, port, health = await create_server(
            "127.0.0.1:0", RedemptionServicer(plane, metrics), overload_lag_s=overload_lag_s)
        await mark_serving(health)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
                return await asyncio.to_thread(calls, stub), registry
        finally:
            await server.stop(grace=None)

    return asyncio.run(main())


def _outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _behind_a_held_call(holding: Callable[[], int], first: Callable[[], Any],
                        then: list[Callable[[], Any]]) -> list[grpc.StatusCode]:
    """Start `first`; once it holds the server (`holding()` > 0), start `then` at once.
    The status codes of all of them, `first`'s first."""
    with ThreadPoolExecutor(1 + len(then)) as pool:
        held = pool.submit(_outcome, first)
        while holding() == 0:
            time.sleep(0.005)
        rest = [pool.submit(_outcome, call) for call in then]
        return [held.result(), *(f.result() for f in rest)]


class CountingSource:
    """The real store, counting its reads."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.reads = inner, 0

    def read_service(self, service: str, entity_key: str, ids: Sequence[int]) -> dict:
        self.reads += 1
        return self.inner.read_service(service, entity_key, ids)


def test_a_call_whose_deadline_passed_while_it_waited_is_not_worked_on(trained: Any) -> None:
    member = _sample(trained)[0]
    source = CountingSource(FeastSource(trained.store))
    request = pb.GetChurnRiskRequest(member_id=member)

    model = SlowModel(0.4)

    def calls(stub: Any) -> list[Any]:
        return _behind_a_held_call(lambda: model.calls,
                                   lambda: stub.GetChurnRisk(request, timeout=10),
                                   [lambda: stub.GetChurnRisk(request, timeout=0.1)])

    (slow, late), registry = _serve_threads(trained, model, None, calls, source)
    assert (slow, late) == (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)
    # the expired call read nothing and scored nothing
    assert source.reads == 1 and model.calls == 1
    answered = registry.get_sample_value("recsvc_requests_total",
                                         {"rpc": "GetChurnRisk", "code": "OK"})
    assert answered == 1


def test_overload_is_shed_with_resource_exhausted(trained: Any) -> None:
    member = _sample(trained)[0]
    source = CountingSource(FeastSource(trained.store))
    request = pb.GetChurnRiskRequest(member_id=member)

    model = SlowModel(0.3)

    def calls(stub: Any) -> list[Any]:
        def call() -> Any:
            return stub.GetChurnRisk(request, timeout=30)

        return _behind_a_held_call(lambda: model.calls, call, [call] * 8)

    codes, registry = _serve_threads(trained, model, 0.05, calls, source)
    assert codes[0] == grpc.StatusCode.OK
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # a refused call computed nothing (refused on arrival, or once its read came back from
    # its thread and found the server behind), and is counted under its code
    assert model.calls == codes.count(grpc.StatusCode.OK) <= source.reads
    assert registry.get_sample_value("recsvc_requests_total", {
        "rpc": "GetChurnRisk", "code": "RESOURCE_EXHAUSTED"}) == codes.count(
        grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_a_lone_caller_of_long_calls_is_never_shed(trained: Any) -> None:
    """Each call holds the loop longer than the overload lag, but nothing queues behind it."""
    member = _sample(trained)[0]
    request = pb.GetChurnRiskRequest(member_id=member)

    def calls(stub: Any) -> list[Any]:
        return [_outcome(lambda: stub.GetChurnRisk(request, timeout=30)) for _ in range(6)]

    codes, _ = _serve_threads(trained, SlowModel(0.12), 0.05, calls)
    assert codes == [grpc.StatusCode.OK] * 6


class HungSource:
    """The real store, except that reads of one member hang until `release` is set."""

    def __init__(self, inner: Any, member: int) -> None:
        self.inner, self.member = inner, member
        self.hung = threading.Event()
        self.release = threading.Event()

    def read_service(self, service: str, entity_key: str, ids: Sequence[int]) -> dict:
        if self.member in ids:
            self.hung.set()
            self.release.wait(30)
        return self.inner.read_service(service, entity_key, ids)


def test_a_hung_store_read_holds_up_only_its_own_call(trained: Any) -> None:
    """Reads run off the event loop: while one member's read hangs, calls for other members
    are answered (a read on the loop would hold every call until it returned)."""
    hung_member, *others = _sample(trained)[:6]
    source = HungSource(FeastSource(trained.store), hung_member)

    def calls(stub: Any) -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(_outcome, lambda: stub.GetRedemptionHint(
                pb.GetRedemptionHintRequest(member_id=hung_member, item_id=_items(trained)[0]),
                timeout=30))
            assert source.hung.wait(10)
            rest = []
            for member in others:  # one after another, each while the first still hangs
                rest.append(_outcome(lambda m=member: stub.GetRedemptionHint(
                    pb.GetRedemptionHintRequest(member_id=m, item_id=_items(trained)[0]),
                    timeout=10)))
                rest.append(_outcome(lambda m=member: stub.GetChurnRisk(
                    pb.GetChurnRiskRequest(member_id=m), timeout=10)))
            still_hung = not held.done()
            source.release.set()
            return [still_hung, held.result(), *rest]

    still_hung, first, *rest = _serve_threads(trained, SlowModel(0.0), None, calls, source)[0]
    assert still_hung and first == grpc.StatusCode.OK
    assert rest == [grpc.StatusCode.OK] * 2 * len(others)


def test_late_ticks_are_overload_only_with_calls_queued_behind() -> None:
    from recsvc.transport.servicer import LoadShedder

    async def lateness(queued: int) -> bool:
        shedder = LoadShedder(max_lag_s=0.04, interval_s=0.005, waiting=lambda: queued)
        task = asyncio.create_task(shedder.run())
        for _ in range(5):  # every tick comes late, each after one 80 ms call
            time.sleep(0.08)
            shedder.observe(0.08)
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        task.cancel()
        return shedder.overloaded

    assert not asyncio.run(lateness(0))  # nothing waits behind the call: a lone caller
    assert asyncio.run(lateness(2))  # two calls queued: 160 ms of wait > 40 ms

    async def after_cancelled_calls() -> bool:
        """Calls cancelled while they waited stay in channelz's count of calls received and
        never reach a handler: the drift seen on ticks that came on time is taken off."""
        unread = [100]  # cancelled while queued, earlier
        shedder = LoadShedder(max_lag_s=0.04, interval_s=0.005, waiting=lambda: unread[0])
        task = asyncio.create_task(shedder.run())
        await asyncio.sleep(0.05)  # on time: the drift is sampled
        for _ in range(5):  # a lone caller's long calls: every tick late, nothing more waits
            time.sleep(0.08)
            shedder.observe(0.08)
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        lone = shedder.overloaded
        unread[0] = 102  # now two calls really wait
        for _ in range(5):
            time.sleep(0.08)
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        task.cancel()
        return not lone and shedder.overloaded

    assert asyncio.run(after_cancelled_calls())


def test_one_late_tick_is_not_overload_but_sustained_lateness_is() -> None:
    from recsvc.transport.servicer import LoadShedder

    async def main() -> None:
        shedder = LoadShedder(max_lag_s=0.04, interval_s=0.005)
        task = asyncio.create_task(shedder.run())
        await asyncio.sleep(0.02)
        time.sleep(0.15)  # one long call holds the loop
        await asyncio.sleep(0.001)
        assert shedder.lag > 0.04 and not shedder.overloaded
        await asyncio.sleep(0.03)
        assert shedder.late_ticks == 0  # on time again
        for _ in range(4):  # the loop stays behind: every tick comes late
            time.sleep(0.08)
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        assert shedder.overloaded
        await asyncio.sleep(0.05)
        assert not shedder.overloaded  # caught up
        task.cancel()

    asyncio.run(main())


def test_a_flagged_members_answers_ask_for_verification(trained: Any) -> None:
    """The fraud job's flags, read from the online store, mark every answer about the
    member's points; nothing is refused, and an unflagged member's answers are unmarked."""
    import pyarrow.parquet as pq

    from recsvc.offline.fraud import run_fraud_flags

    run = run_fraud_flags(trained.settings, trained.programme, say=lambda _: None)
    table = pq.read_table(run.offline)
    names = dict(zip(table["member_id"].to_pylist(), table["fraud_flags"].to_pylist(),
                     strict=True))
    flagged = next(m for m, f in names.items() if f)
    clean = next(m for m, f in names.items() if not f)
    want = [converters.FRAUD_FLAGS[f] for f in names[flagged].split(",")]
    item = _items(trained)[0]
    line = pb.CartLine(item_id=item, unit_price_minor=30_000, quantity=1, points_eligible=True)

    async def check(stub: Any, _: Any, __: Any, registry: CollectorRegistry) -> None:
        for member, required in ((flagged, True), (clean, False)):
            answers = [
                await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(member_id=member,
                                                                         item_id=item)),
                await stub.BatchGetRedemptionHints(pb.BatchGetRedemptionHintsRequest(
                    member_id=member, item_ids=[item, item])),
                await stub.RecommendRedemptions(pb.RecommendRedemptionsRequest(
                    member_id=member, limit=5)),
                await stub.OptimizeCartSplit(pb.OptimizeCartSplitRequest(member_id=member,
                                                                         lines=[line])),
                await stub.GetNudges(pb.GetNudgesRequest(member_id=member, dry_run=True)),
            ]
            for got in answers:
                assert got.verification.required is required
                assert list(got.verification.flags) == (want if required else [])
        # the cart still splits: verification is asked for, nothing is blocked
        assert answers[3].points_value_minor + answers[3].cash_minor == 30_000
        first = names[flagged].split(",")[0]
        assert registry.get_sample_value("recsvc_verification_required_total", {
            "rpc": "OptimizeCartSplit", "flag": first}) == 1

    _serve(trained, check)


def test_drain_tells_watchers_and_pollers_before_refusing_calls(trained: Any) -> None:
    """SIGTERM's drain: a Watch stream gets NOT_SERVING and ends (no grace period spent on it,
    nothing cancelled), a caller polling Check sees NOT_SERVING before calls are refused, and
    a unary call made during the notice is answered."""
    member = _sample(trained)[0]

    async def main() -> None:
        metrics = ServiceMetrics(CollectorRegistry())
        plane = _plane(trained, FeastSource(trained.store), _holder(trained, metrics), metrics,
                       True)
        server, port, health = await create_server("127.0.0.1:0",
                                                   RedemptionServicer(plane, metrics))
        await mark_serving(health)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            probe = health_pb2_grpc.HealthStub(channel)
            stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
            watch = probe.Watch(health_pb2.HealthCheckRequest())
            seen = [(await watch.read()).status]
            polled: list[str] = []

            async def poll() -> None:
                while True:
                    try:
                        got = await probe.Check(health_pb2.HealthCheckRequest(), timeout=2)
                        polled.append(health_pb2.HealthCheckResponse.ServingStatus.Name(
                            got.status))
                    except grpc.aio.AioRpcError as err:
                        polled.append(err.code().name)
                        return
                    await asyncio.sleep(0.02)

            poller = asyncio.create_task(poll())
            await asyncio.sleep(0.1)
            grace = 10.0
            start = time.monotonic()
            draining = asyncio.create_task(drain(server, health, 0.3, grace))
            await asyncio.sleep(0.1)
            during = await stub.GetChurnRisk(pb.GetChurnRiskRequest(member_id=member))
            assert during.risk.member_id == member  # the notice still answers calls
            while (message := await watch.read()) is not grpc.aio.EOF:
                seen.append(message.status)
            assert await watch.code() == grpc.StatusCode.OK  # ended, not cancelled
            await draining
            assert time.monotonic() - start < grace  # nothing waited out the grace period
            await poller
        assert seen == [health_pb2.HealthCheckResponse.SERVING,
                        health_pb2.HealthCheckResponse.NOT_SERVING]
        first = polled.index("NOT_SERVING")
        # refused: UNAVAILABLE once the listener is closed, CANCELLED for a Check that reached
        # the server as it stopped
        assert set(polled[:first]) == {"SERVING"} and polled[-1] in {"UNAVAILABLE", "CANCELLED"}
        assert set(polled[first:-1]) == {"NOT_SERVING"}

    asyncio.run(main())
