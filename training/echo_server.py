"""The floor of Python gRPC on this machine: a bare grpc.aio server that echoes its request.

    python training/echo_server.py [--address 127.0.0.1:50061] [--workers 1]

One unary method, /bench.Echo/Echo, returns the request's bytes unchanged (identity
serialisers: no protobuf on either side), plus the standard health service so a caller can wait
for SERVING exactly as it does for `recsvc serve`. Built like recsvc's server: `grpc.aio.server()`
with default options under `asyncio.run`, on a TCP address. With --workers N, N processes share
the port through SO_REUSEPORT (gRPC's default on Linux), as `recsvc serve --workers N` does.
SIGTERM or SIGINT stops it. training/bench_serving.py starts it as the reference beside the
service.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(address: str) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
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


def _run(address: str) -> None:
    asyncio.run(serve(address))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50061",
                        help="host:port (a fixed port: the workers share it)")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    args = parser.parse_args()
    if args.workers <= 1:
        _run(args.address)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_run, args=(args.address,), daemon=True)
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
