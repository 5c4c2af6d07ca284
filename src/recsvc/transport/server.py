"""Building and running the grpc.aio server: health, reflection, model refresh, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from recsvc.adapters.model_holder import ModelHolder
from recsvc.app.catalogue import Catalogue
from recsvc.errors import FeatureStoreUnavailable
from recsvc.metrics import ServiceMetrics
from recsvc.transport.servicer import LoadShedder, RedemptionServicer
from recsvc.v1 import recsvc_pb2, recsvc_pb2_grpc

log = logging.getLogger(__name__)
_background: set[asyncio.Task[None]] = set()  # tasks the loop holds only weakly
SERVICE_NAME = recsvc_pb2.DESCRIPTOR.services_by_name["RedemptionService"].full_name


async def create_server(
    address: str, servicer: RedemptionServicer, *, max_concurrent_rpcs: int | None = None,
    overload_lag_s: float | None = None, credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int, Health]:
    """A started server on `address` ("127.0.0.1:0" picks a free port) and its port.

    Health says NOT_SERVING until `mark_serving` is called, so a load balancer sends nothing
    before models and features are ready. The port is opened with SO_REUSEPORT, so several
    worker processes can listen on it and the kernel spreads connections over them. grpc
    holds at most `max_concurrent_rpcs` calls in progress (more wait in its queue, bounding
    memory); with `overload_lag_s`, a worker whose loop falls that far behind refuses new
    calls with RESOURCE_EXHAUSTED instead of letting them queue past their deadlines.
    With `credentials` it listens with TLS only; `interceptors` (security.TokenAuth) run first.
    """
    servers_before = _channelz_servers()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1),
                                      # connections end after ~5 min (callers reconnect), so
                                      # servers added by an autoscaler get their share
                                      ("grpc.max_connection_age_ms", 300_000),
                                      ("grpc.max_connection_age_grace_ms", 30_000)],
                             maximum_concurrent_rpcs=max_concurrent_rpcs,
                             interceptors=list(interceptors) or None)
    recsvc_pb2_grpc.add_RedemptionServiceServicer_to_server(servicer, server)
    health_servicer = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, (SERVICE_NAME, HEALTH_SERVICE))
    port = (server.add_secure_port(address, credentials) if credentials is not None
            else server.add_insecure_port(address))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    if overload_lag_s is not None:
        ours = _channelz_servers() - servers_before
        servicer.shedder = LoadShedder(
            overload_lag_s, waiting=_waiting(ours.pop(), servicer) if len(ours) == 1 else None)
        if servicer.shedder.waiting is None:
            log.warning("channelz cannot tell this server apart: load shedding falls back to "
                        "event-loop lateness alone")
        _background.add(asyncio.create_task(servicer.shedder.run()))
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, _STATUS.NOT_SERVING)
    await server.start()
    return server, port, health_servicer


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICES = (REFLECTION_V1, reflection.SERVICE_NAME)


def enable_reflection(server: grpc.aio.Server, services: Sequence[str]) -> None:
    """Server reflection under both names callers ask for: grpc.reflection.v1, which buf curl
    and grpcurl try first, and v1alpha, which older tools (and grpcio's own client) speak.

    grpcio-reflection ships only the v1alpha servicer, so the same servicer also answers under
    the v1 name: the two protos differ only in their package (every message, field number,
    type and oneof is the same, both proto3), so their messages are the same bytes. Symbols
    resolve from the default descriptor pool, which holds google.rpc.Status and BadRequest
    because errors.py imports them: grpcurl decodes a BadRequest detail through them.
    """
    servicer = reflection.aio.ReflectionServicer((*services, *REFLECTION_SERVICES))
    handlers = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    for name in REFLECTION_SERVICES:  # as generated add_*Servicer_to_server functions do
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)


def _channelz_servers() -> set[int]:
    """The ids channelz knows servers of this process by (empty when channelz is off)."""
    try:
        found = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
    except Exception:  # channelz disabled or its format changed: no in-flight count
        return set()
    return {int(s["ref"]["serverId"]) for s in found}


def _waiting(server_id: int, servicer: RedemptionServicer) -> Callable[[], int | None]:
    """Calls the server received that no handler has taken yet: channelz counts a call from
    its first headers, the servicer when its handler starts (no interceptor, which would
    put a coroutine of its own in every call's path; the few health and reflection calls
    the servicer does not see read as calls that never start, as cancelled ones do, and the
    shedder's drift takes them off)."""
    def count() -> int | None:
        try:
            data = json.loads(cygrpc.channelz_get_server(server_id))["server"]["data"]
        except Exception:
            return None
        return max(int(data.get("callsStarted", 0)) - servicer.dispatched, 0)
    return count


HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_STATUS = health_pb2.HealthCheckResponse


class Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 for a server that drains: `drain()` turns every service NOT_SERVING,
    tells every Watch stream so and ends it (OK), and from then on no status changes;
    `close()`, when the notice is over, ends the watches begun since.

    grpcio's own aio HealthServicer keeps Watch streams open through shutdown, so the
    server's grace period is spent waiting on them and they end cancelled (with tracebacks in
    the log); a watcher then never sees NOT_SERVING. A gRPC client restarts a watch that
    ended after a message at once, without backoff (A17's client, C-core's
    SubchannelStreamClient), so a watch that begins while draining is told NOT_SERVING and
    held open until `close()`: ended at once too, each caller's channel would ask again in a
    loop that took the draining worker's CPU (measured: ~900 watches in 0.5 s from one
    channel; the load's calls waited behind them)."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": _STATUS.SERVING}
        self._changed = asyncio.Condition()
        self.draining = False
        self.closed = False

    async def set(self, service: str, status: int) -> None:
        async with self._changed:
            if not self.draining:
                self._status[service] = status
                self._changed.notify_all()

    async def drain(self) -> None:
        async with self._changed:
            self.draining = True
            for service in self._status:
                self._status[service] = _STATUS.NOT_SERVING
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def Check(self, request: Any, context: Any) -> Any:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return _STATUS(status=status)

    async def Watch(self, request: Any, context: Any) -> None:
        last = None
        async with self._changed:
            began_draining = self.draining
            while True:
                status = self._status.get(request.service, _STATUS.SERVICE_UNKNOWN)
                if status != last:
                    await context.write(_STATUS(status=status))
                    last = status
                if self.closed or (self.draining and not began_draining):
                    return  # the stream ends: the watcher reconnects elsewhere
                await self._changed.wait()


async def mark_serving(health_servicer: Health) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, _STATUS.SERVING)


async def drain(server: grpc.aio.Server, health_servicer: Health, notice_s: float,
                grace_s: float) -> None:
    """Stop as a load balancer needs: health NOT_SERVING at once (watchers told, their
    streams ended), every call still answered for `notice_s` so pollers of health see it,
    then new calls refused and those in progress given `grace_s` to finish."""
    await health_servicer.drain()
    if notice_s > 0:
        await asyncio.sleep(notice_s)
    await health_servicer.close()
    await server.stop(grace_s)


async def refresh_models(holders: list[ModelHolder], catalogue: Catalogue,
                         every_s: float, prepare: Callable[[], None] | None = None) -> None:
    """Poll the registry and swap in newly promoted versions, and reload the in-memory
    catalogue, off the event loop; then `prepare` what answers compute from them, also off
    the loop (a new load is unchanged if nothing changed, and preparing it is then free)."""
    while True:
        await asyncio.sleep(every_s)
        for job, name in [*((h.refresh, h.name) for h in holders),
                          (catalogue.refresh, "catalogue"),
                          *([(prepare, "answers' preparation")] if prepare else [])]:
            try:
                await asyncio.to_thread(job)
            except FeatureStoreUnavailable as exc:  # expected while the store is away: no trace
                log.warning("refreshing %s: %s (the last load goes on serving)", name, exc)
            except Exception:  # a failed refresh must never stop future ones
                log.exception("refreshing %s failed", name)


async def publish_cache_stats(reader: Any, metrics: ServiceMetrics, every_s: float) -> None:
    """Copy the online reader's cache hits, misses and size into the metrics every `every_s`
    (readers without a cache have no `cache_stats`)."""
    stats = getattr(reader, "cache_stats", None)
    if stats is None:
        return
    while True:
        metrics.publish_cache(*stats())
        await asyncio.sleep(every_s)
