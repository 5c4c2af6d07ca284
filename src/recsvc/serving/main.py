"""`recsvc serve` and `recsvc client`: run the service, and call it from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from typing import Any

from recsvc.settings import load_settings

log = logging.getLogger(__name__)
GRACE_SECONDS = 5.0


async def serve(address: str | None = None, metrics_port: int | None = None) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from recsvc.data import schema
    from recsvc.features.online import OnlineReader
    from recsvc.metrics import ServiceMetrics
    from recsvc.models.jobs import open_context
    from recsvc.models.scoring import ChurnScorer, PropensityScorer
    from recsvc.serving.dataplane import Catalogue, Dataplane
    from recsvc.serving.models import ModelHolder
    from recsvc.serving.server import create_server, mark_serving, refresh_models
    from recsvc.serving.servicer import RedemptionServicer

    settings = load_settings()
    address = address or settings.grpc_address
    metrics_port = settings.metrics_port if metrics_port is None else metrics_port
    ctx = open_context(settings)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    churn = ModelHolder("churn", ctx.registry, ChurnScorer, metrics, ctx.known_features)
    churn.refresh()
    propensity = ModelHolder("propensity", ctx.registry,
                             lambda loaded: PropensityScorer(loaded, ctx.programme.index),
                             metrics, ctx.known_features)
    propensity.refresh()
    # Feast's own layout read directly: proven equal to get_online_features, 20x faster
    reader = OnlineReader.from_store(ctx.store)

    def item_ids() -> list[int]:
        return list(schema.read_table(settings.data_dir, "items", ["item_id"])["item_id"]
                    .to_pylist())

    catalogue = Catalogue(reader, item_ids)
    catalogue.refresh()
    plane = Dataplane(reader, churn, metrics, programme=ctx.programme, propensity=propensity,
                      catalogue=catalogue)
    server, port, health = await create_server(address, RedemptionServicer(plane, metrics))
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    await mark_serving(health)
    host = address.rsplit(":", 1)[0]
    print(f"recsvc serving recsvc.v1.RedemptionService on {host}:{port}"
          + (f" (metrics on http://127.0.0.1:{metrics_port}/metrics)" if metrics_port else ""),
          flush=True)
    for holder in (churn, propensity):
        print(f"  {holder.name} model: "
              f"{holder.current.version if holder.current else 'none (degraded)'}")
    print(f"  catalogue: {len(catalogue.rows):,} items in memory")
    print(f"  try: .venv/bin/recsvc client --address {host}:{port} churn 1 2 3", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    refresher = asyncio.create_task(refresh_models([churn, propensity], catalogue,
                                                   settings.model_refresh_seconds))
    await stop.wait()
    print("recsvc: shutting down", flush=True)
    await health.enter_graceful_shutdown()  # NOT_SERVING first, so balancers drain us
    refresher.cancel()
    await server.stop(GRACE_SECONDS)
    return 0


async def _client(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from recsvc.v1 import recsvc_pb2 as pb
    from recsvc.v1 import recsvc_pb2_grpc

    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
        try:
            reply: Any = await stub.BatchGetChurnRisk(
                pb.BatchGetChurnRiskRequest(member_ids=args.member_ids), timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:
            print(f"recsvc client: {exc.code().name}: {exc.details()}")
            return 1
    print(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True), indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args.address, args.metrics_port))


def _cmd_client(args: argparse.Namespace) -> int:
    return asyncio.run(_client(args))


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gRPC service",
                       description="Serve recsvc.v1.RedemptionService (grpc.aio) with health "
                                   "checks and reflection; metrics over HTTP for Prometheus. "
                                   "SIGTERM drains: health turns NOT_SERVING, then calls get "
                                   f"{GRACE_SECONDS:.0f} s to finish.")
    p.add_argument("--address", default=None,
                   help="host:port to listen on (default $RECSVC_GRPC_ADDRESS or "
                        "127.0.0.1:50051; port 0 picks a free port)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port (default $RECSVC_METRICS_PORT or 9464; 0: none)")
    p.set_defaults(func=_cmd_serve)
    c = sub.add_parser("client", help="call the service from a terminal",
                       description="A small client for people and smoke tests; prints JSON.")
    c.add_argument("--address", default="127.0.0.1:50051")
    c.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    calls = c.add_subparsers(dest="call", required=True, metavar="CALL")
    churn = calls.add_parser("churn", help="BatchGetChurnRisk for member ids")
    churn.add_argument("member_ids", type=int, nargs="+")
    c.set_defaults(func=_cmd_client)
