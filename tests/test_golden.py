"""Golden answers replayed: 1,000 random requests of every RPC through the real server, on
SQLite and on the real Redis, answered as main answered them when the fixture was captured.

The serving path is rebuilt for speed; this is what holds its answers still (tests/golden.py
says how they are compared and how to capture them again)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import ParseDict
from prometheus_client import CollectorRegistry

import golden
from recsvc.adapters import feast as fstore
from recsvc.adapters.caps_sqlite import SqliteCapStore
from recsvc.adapters.model_holder import ModelHolder
from recsvc.adapters.online import OnlineReader
from recsvc.app.catalogue import Catalogue
from recsvc.app.dataplane import Dataplane
from recsvc.data import schema
from recsvc.jobs.features import run_features
from recsvc.metrics import ServiceMetrics
from recsvc.ml.scoring import ChurnScorer, PropensityScorer
from recsvc.offline.batch_scoring import features_as_of
from recsvc.settings import Settings
from recsvc.transport.server import create_server, mark_serving
from recsvc.transport.servicer import RedemptionServicer
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc

CAPTURE = os.environ.get("RECSVC_GOLDEN_CAPTURE") == "1"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flagged(trained: Any) -> Any:
    """The trained programme with the fraud job's flags online (as another test leaves it,
    whichever runs first: the job gives the same flags every time), so verification is in
    the answers too."""
    from recsvc.offline.fraud import run_fraud_flags

    run_fraud_flags(trained.settings, trained.programme, say=lambda _: None)
    return trained


def _ids(ctx: Any, table: str, column: str) -> list[int]:
    return [int(i) for i in schema.read_table(ctx.settings.data_dir, table,
                                              [column])[column].to_numpy()]


def _requests(ctx: Any) -> list[tuple[str, Any]]:
    items = schema.read_table(ctx.settings.data_dir, "items", ["item_id", "category"])
    return golden.requests(
        _ids(ctx, "members", "member_id"), [int(i) for i in items["item_id"].to_numpy()],
        sorted(set(items["category"].to_pylist())),
        [a.name for a in ctx.programme.experiments.arms])


def _replay(ctx: Any, registry: Any, feast_store: Any, caps: Path,
            calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Answers to `calls` from a server built as `recsvc serve` builds it (the direct online
    reader, the catalogue in memory, the LightGBM boosters of `registry`) at the features'
    as-of instant."""
    async def main() -> list[dict[str, Any]]:
        metrics = ServiceMetrics(CollectorRegistry())
        churn = ModelHolder("churn", registry, ChurnScorer, metrics, ctx.known_features)
        propensity = ModelHolder(
            "propensity", registry,
            lambda loaded: PropensityScorer(loaded, ctx.programme),
            metrics, ctx.known_features)
        churn.refresh()
        propensity.refresh()
        reader = OnlineReader.from_store(feast_store)
        catalogue = Catalogue(reader, lambda: _ids(ctx, "items", "item_id"))
        catalogue.refresh()
        now = features_as_of(ctx.settings.data_dir).timestamp()
        plane = Dataplane(reader, churn, metrics, programme=ctx.programme,
                          propensity=propensity, catalogue=catalogue,
                          caps=SqliteCapStore(caps), clock=lambda: now)
        server, port, health = await create_server("127.0.0.1:0",
                                                   RedemptionServicer(plane, metrics))
        await mark_serving(health)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
                return [await golden.answer(stub, rpc, request) for rpc, request in calls]
        finally:
            await server.stop(grace=None)
            reader.close()

    return asyncio.run(main())


def _check(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    bad = []
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        diff = golden.differences(g, w["answer"])
        if diff:
            bad.append(f"#{k} {w['rpc']} {w['request']}: " + "; ".join(diff[:5]))
    assert not bad, f"{len(bad)} answers changed, the first:\n" + "\n".join(bad[:10])


def _calls(records: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    request_types = {m.name: m.input_type.name
                     for m in pb.DESCRIPTOR.services_by_name["RedemptionService"].methods}
    return [(r["rpc"], ParseDict(r["request"], getattr(pb, request_types[r["rpc"]])()))
            for r in records]


def test_sqlite_answers_match_the_golden_answers(flagged: Any, tmp_path: Path) -> None:
    trained = flagged
    if CAPTURE:
        calls = _requests(trained)
        answers = _replay(trained, trained.registry, trained.store,
                          tmp_path / "capture-caps.sqlite", calls)
        golden.save([{**golden.encode_request(rpc, req), "answer": a}
                     for (rpc, req), a in zip(calls, answers, strict=True)],
                    golden.model_files(trained.registry))
    fixture = golden.load()
    records = fixture["records"]
    assert len(records) >= 7 * golden.PER_RPC
    registry = golden.registry_of(fixture["models"], tmp_path / "models", trained.registry)
    _check(_replay(trained, registry, trained.store, tmp_path / "caps.sqlite", _calls(records)),
           records)


@pytest.mark.redis
def test_redis_answers_match_the_golden_answers(flagged: Any, tmp_path: Path, redis_url: str,
                                               redis_project: str) -> None:
    from recsvc.offline.fraud import run_fraud_flags

    trained = flagged
    settings = Settings(data_dir=trained.settings.data_dir, feast_project=redis_project,
                        redis_url=redis_url)
    run_features(settings, trained.programme, say=lambda _: None)  # the same snapshots
    run_fraud_flags(settings, trained.programme, say=lambda _: None)  # and flags
    fixture = golden.load()
    records = fixture["records"]
    registry = golden.registry_of(fixture["models"], tmp_path / "models", trained.registry)
    feast_store = fstore.open_store(settings)
    _check(_replay(trained, registry, feast_store, tmp_path / "caps.sqlite", _calls(records)),
           records)
