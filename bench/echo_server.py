"""The floor of Python gRPC on this machine: a bare grpc.aio server that echoes its request.

    python bench/echo_server.py [--address 127.0.0.1:50061] [--workers 1]
                                   [--transport aio|uvloop|sync|shell] [--score MODEL_TXT]

One unary method, /bench.Echo/Echo, returns the request's bytes unchanged (identity
serialisers: no protobuf on either side), plus the standard health service so a caller can wait
for SERVING exactly as it does for `recsvc serve`. Built like recsvc's server: `grpc.aio.server()`
with default options under `asyncio.run`, on a TCP address. With --workers N, N processes share
the port through SO_REUSEPORT (gRPC's default on Linux), as `recsvc serve --workers N` does.
SIGTERM or SIGINT stops it. bench/bench_serving.py starts it as the reference beside the
service.

The transports to put side by side: `aio` (grpc.aio on asyncio's loop, what recsvc serves
with), `uvloop` (grpc.aio on uvloop's loop) and `sync` (grpcio's threaded server, 8 threads).
`shell` is no transport but a floor of recsvc's own: grpc.aio running recsvc's servicer (the
request parsed, bounds, admission, metrics, the answer serialised) around a canned hint
answer, so a hint's cost splits into the shell's and the answer's own work.
`--score MODEL_TXT` makes it the score floor: every call also scores one row of that LightGBM
model compiled as recsvc serves it (recsvc.adapters.compiled), and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


SYNC_THREADS = 8


def _handler(score: str | None) -> Any:
    """The echo function: the request back, after scoring one model row when asked."""
    if score is None:
        def echo(request: bytes, context: Any) -> bytes:
            return request
        return echo
    import numpy as np

    from recsvc.adapters.compiled import CompiledModel

    model = CompiledModel(score)
    row = np.full((1, model.booster.num_feature()), 0.5)

    def scored(request: bytes, context: Any) -> bytes:
        model.predict_raw(row)
        return request
    return scored


def _generic(handler: Any) -> Any:
    return grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(handler)})


def _shell() -> Any:
    """recsvc's own servicer around a canned hint: the request parsed as a
    GetRedemptionHintRequest, `RedemptionServicer._call` (bounds, admission, metrics, the error
    table) running a work that returns a full hint answer made once, the answer serialised.
    What a hint costs beyond it is the answer's own work (features, index, model, rule)."""
    from prometheus_client import CollectorRegistry

    from recsvc.metrics import ServiceMetrics
    from recsvc.transport.servicer import RedemptionServicer
    from recsvc.v1 import recsvc_pb2 as pb

    class NoDataplane:
        programme = None

    metrics = ServiceMetrics(CollectorRegistry())
    servicer = RedemptionServicer(NoDataplane(), metrics)  # type: ignore[arg-type]
    answer = pb.GetRedemptionHintResponse(  # every field a real hint fills, sized alike
        hint=pb.RedemptionHint(
            item_id=1234, points_better=True, threshold=1.0, value_per_point=0.0125,
            propensity=0.0734, vacuum_zone=False, affordable=True, points_gap=0,
            spend_to_close_gap_minor=0, points_price=5400, in_stock=True,
            factors=pb.IndexFactors(value_coefficient=0.0125, demand_match=1.12,
                                    behaviour_weight=1.35, discount_coefficient=0.9,
                                    recommendation_index=1.7),
            points_cash=pb.PointsCashOption(points=5400, cash_minor=0),
            reasons=[pb.REASON_CODE_INDEX_ABOVE_THRESHOLD, pb.REASON_CODE_HIGH_PROPENSITY]),
        experiment_arm="control", model_version="v0001")

    async def work(admit: Any) -> Any:
        return answer

    async def shell(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parsed = pb.GetRedemptionHintRequest.FromString(request)
        done = await servicer._call("GetRedemptionHint", context, parsed, work)
        return done.SerializeToString()
    return shell


async def serve(address: str, score: str | None = None, shell: bool = False) -> None:
    server = grpc.aio.server()
    sync_handler = _handler(score)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return sync_handler(request, context)

    server.add_generic_rpc_handlers((_generic(_shell() if shell else echo),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"echo serving {METHOD} on {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def serve_sync(address: str, score: str | None = None) -> None:
    """grpcio's threaded server: handlers on a pool of SYNC_THREADS threads."""
    import threading
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SYNC_THREADS))
    server.add_generic_rpc_handlers((_generic(_handler(score)),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"echo serving {METHOD} on {address} (sync)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1.0).wait()


def _run(address: str, transport: str = "aio", score: str | None = None) -> None:
    if transport == "shell":
        asyncio.run(serve(address, shell=True))
        return
    if transport == "sync":
        serve_sync(address, score)
        return
    if transport == "uvloop":
        import uvloop

        uvloop.run(serve(address, score))
        return
    asyncio.run(serve(address, score))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50061",
                        help="host:port (a fixed port: the workers share it)")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--transport", choices=["aio", "uvloop", "sync", "shell"], default="aio",
                        help="shell: grpc.aio running recsvc's servicer around a canned hint")
    parser.add_argument("--score", default=None, metavar="MODEL_TXT",
                        help="score one row of this LightGBM model (compiled) per call")
    args = parser.parse_args()
    if args.workers <= 1:
        _run(args.address, args.transport, args.score)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run, args=(args.address, args.transport, args.score),
                         daemon=True)
             for _ in range(args.workers)]
    for p in procs:
        p.start()
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(wait())
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(5)


if __name__ == "__main__":
    main()
