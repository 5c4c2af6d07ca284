"""In-process cost of each answer: the dataplane called directly, no gRPC (the serving bench's
server CPU per answer, split from the transport).

    .venv/bin/python bench/bench_dataplane.py [--calls 3000] [--compiled] [--profile NAME]

Reads the default data (`make features && make train`) through the SQLite online reader as
`recsvc serve` does, with the production models (LightGBM boosters, or compiled with
--compiled), and prints p50/p99 and mean µs per call of: a one-item hint, a 100-item batch of
hints, 200 recommendations and a 1,000-member churn batch. Members are drawn at random from all
members (a cold member cache), and again from 100 of them (hint-warm: a page asking for the
same members; the churn batches repeat members, so most are read from memory), and the warm hint
once more through the gRPC handler without the transport (hint-warm-rpc: the request parsed,
`RedemptionServicer.GetRedemptionHint` with its checks and metrics, the answer serialised).
--profile NAME prints a cProfile of one of them instead.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import os
import pstats
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build(compiled: bool) -> tuple[Any, list[int], list[int]]:
    from recsvc.adapters.context import open_context
    from recsvc.adapters.model_holder import ModelHolder
    from recsvc.adapters.online import OnlineReader
    from recsvc.app.catalogue import Catalogue
    from recsvc.app.dataplane import Dataplane
    from recsvc.data import schema
    from recsvc.metrics import ServiceMetrics
    from recsvc.ml.scoring import ChurnScorer, PropensityScorer
    from recsvc.offline.batch_scoring import features_as_of
    from recsvc.settings import load_settings

    settings = load_settings()
    ctx = open_context(settings)
    metrics = ServiceMetrics(CollectorRegistry())

    def native(loaded: Any) -> Any:
        if not compiled:
            return loaded
        from recsvc.adapters.compiled import CompiledModel
        from recsvc.adapters.registry import MODEL_FILE

        return dataclasses.replace(loaded, booster=CompiledModel(
            loaded.directory / MODEL_FILE, booster=loaded.booster))

    churn = ModelHolder("churn", ctx.registry, lambda m: ChurnScorer(native(m)), metrics,
                        ctx.known_features)
    propensity = ModelHolder("propensity", ctx.registry,
                             lambda m: PropensityScorer(native(m), ctx.programme),
                             metrics, ctx.known_features)
    churn.refresh()
    propensity.refresh()
    reader = OnlineReader.from_store(ctx.store)
    items = [int(i) for i in schema.read_table(settings.data_dir, "items", ["item_id"])
             ["item_id"].to_pylist()]
    catalogue = Catalogue(reader, lambda: items)
    catalogue.refresh()
    now = features_as_of(settings.data_dir).timestamp()
    plane = Dataplane(reader, churn, metrics, programme=ctx.programme, propensity=propensity,
                      catalogue=catalogue, clock=lambda: now)
    members = [int(m) for m in schema.read_table(settings.data_dir, "members", ["member_id"])
               ["member_id"].to_pylist()]
    return plane, members, items


def timed(fn: Callable[[int], Any], n: int) -> np.ndarray:
    out = np.empty(n)
    gc.collect()
    gc.freeze()
    for k in range(n):
        start = time.perf_counter()
        fn(k)
        out[k] = time.perf_counter() - start
    gc.unfreeze()
    return out * 1e6


class _Context:
    """The little of grpc.aio's ServicerContext a successful call uses."""

    def time_remaining(self) -> None:
        return None


def run_now(coro: Any) -> Any:
    """The result of a coroutine that never waits (a warm hint: its read is answered from
    memory), driven without an event loop, so its time is the handler's alone."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the call waited: its read was not answered at once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--profile",
                        choices=["hint", "hint-warm", "hint-warm-rpc", "hints100",
                                 "hints100-rpc", "recommend", "recommend-rpc", "churn"])
    args = parser.parse_args()
    from recsvc.app.answers import HintRequest, RecommendRequest
    from recsvc.transport.servicer import RedemptionServicer
    from recsvc.v1 import recsvc_pb2 as pb

    plane, members, items = build(args.compiled)
    rng = np.random.default_rng(1)
    n = args.calls
    cold = rng.choice(members, n).tolist()
    warm = rng.choice(rng.choice(members, 100, replace=False), n).tolist()
    one = rng.choice(items, n).tolist()
    many = [rng.choice(items, 100, replace=False).tolist() for _ in range(50)]
    servicer = RedemptionServicer(plane, plane.metrics)
    wire = [pb.GetRedemptionHintRequest(member_id=m, item_id=i).SerializeToString()
            for m, i in zip(warm, one, strict=True)]

    batches = [pb.BatchGetRedemptionHintsRequest(member_id=m, item_ids=many[k % 50])
               .SerializeToString() for k, m in enumerate(cold)]
    rankings = [pb.RecommendRedemptionsRequest(member_id=m, limit=200).SerializeToString()
                for m in cold]

    def handled(method: Any, kind: Any, requests: list[bytes]) -> Callable[[int], bytes]:
        """What the worker does between grpc's bytes in and out for one RPC."""
        def call(k: int) -> bytes:
            answer = run_now(method(kind.FromString(requests[k]), _Context()))
            return answer.SerializeToString()  # type: ignore[no-any-return]
        return call
    cases: dict[str, tuple[Callable[[int], Any], int]] = {
        "hint": (lambda k: plane.hints(HintRequest(cold[k], [one[k]]), "bench"), n),
        "hint-warm": (lambda k: plane.hints(HintRequest(warm[k], [one[k]]), "bench"), n),
        "hint-warm-rpc": (handled(servicer.GetRedemptionHint, pb.GetRedemptionHintRequest,
                                  wire), n),
        "hints100": (lambda k: plane.hints(HintRequest(cold[k], many[k % 50]), "bench"),
                     n // 10),
        "hints100-rpc": (handled(servicer.BatchGetRedemptionHints,
                                 pb.BatchGetRedemptionHintsRequest, batches), n // 10),
        "recommend": (lambda k: plane.recommend(RecommendRequest(cold[k], limit=200),
                                                "bench"), n // 10),
        "recommend-rpc": (handled(servicer.RecommendRedemptions,
                                  pb.RecommendRedemptionsRequest, rankings), n // 10),
        "churn": (lambda k: plane.churn_risk(cold[k * 1000 % n:][:1000] or cold[:1000],
                                             "bench"), max(n // 100, 5)),
    }
    if args.profile:
        fn, calls = cases[args.profile]
        timed(fn, min(calls, 200))
        prof = cProfile.Profile()
        prof.enable()
        timed(fn, calls)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return
    print(f"{'answer':<20} {'calls':>6} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}")
    for name, (fn, calls) in cases.items():
        timed(fn, min(calls, 100))  # warm up
        t = timed(fn, calls)
        print(f"{name:<20} {calls:>6} {np.percentile(t, 50):>9.0f} "
              f"{np.percentile(t, 99):>9.0f} {t.mean():>9.0f}")


if __name__ == "__main__":
    main()
