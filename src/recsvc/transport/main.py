"""`recsvc serve`: run the service (`recsvc client`, which calls it, is transport.client)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from recsvc.defaults import GRPC_ADDRESS
from recsvc.errors import RecsvcError
from recsvc.settings import load_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
GRACE_SECONDS = 5.0
CACHE_STATS_SECONDS = 5.0  # how often the online reader's cache counts reach the metrics


def freeze_after_full_collections() -> None:
    """After every full (generation 2) collection, freeze what survived it; every
    `SWEEP_SECONDS`, let one full collection walk everything instead.

    The member caches hold a few hundred thousand objects that live for minutes; a full
    collection walks all of them (30-120 ms measured under load, the whole tail of the
    latency), and Python 3.11 runs one whenever the long-lived objects grew by a quarter.
    What survives a full collection is alive: frozen, the next full collection walks only
    what was promoted since (~15 ms measured). Frozen objects are still freed by reference
    counting when dropped (the caches' rows and contexts are not cyclic), but a cycle that
    dies frozen (a call in flight during a collection that failed, its exception holding its
    frames) would stay: the sweep unfreezes everything, so the next full collection frees such
    cycles, at the price of one long pause per sweep."""
    import gc

    if _freezer not in gc.callbacks:
        gc.callbacks.append(_freezer)


SWEEP_SECONDS = 600.0


class _Freezer:
    def __init__(self) -> None:
        self.swept = time.monotonic()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        import gc

        now = time.monotonic()
        if now - self.swept >= SWEEP_SECONDS:
            self.swept = now
            gc.unfreeze()  # into the oldest generation: the next full collection walks all
        else:
            gc.freeze()


_freezer = _Freezer()


async def serve_worker(address: str, announce: Callable[[dict[str, Any]], None]) -> int:
    """One server process: load features and models, serve on `address` until SIGTERM (or
    until the supervisor that started it is gone), then drain. `announce` gets what the
    worker serves once health says SERVING."""
    import gc

    from recsvc.adapters.caps import open_cap_store
    from recsvc.adapters.context import open_context
    from recsvc.adapters.model_holder import ModelHolder
    from recsvc.adapters.online import OnlineReader
    from recsvc.app.catalogue import Catalogue
    from recsvc.app.dataplane import Dataplane
    from recsvc.data import schema
    from recsvc.metrics import ServiceMetrics
    from recsvc.ml.scoring import ChurnScorer, PropensityScorer
    from recsvc.transport import security
    from recsvc.transport.server import (
        create_server,
        drain,
        mark_serving,
        publish_cache_stats,
        refresh_models,
    )
    from recsvc.transport.servicer import RedemptionServicer

    settings = load_settings()
    ctx = open_context(settings, offline=False)  # online reads only: no offline engine loaded
    # values go to the supervisor's multiprocess directory; it serves them over HTTP
    metrics = ServiceMetrics(CollectorRegistry())

    def native(loaded: Any, leaves: bool = False) -> Any:
        """The artefact with its booster compiled to native code (lleaves), when enabled:
        compiled in a child process at low priority first (the worker's threads only wait),
        then loaded from the cache; compiled here if the child failed."""
        if not settings.compiled_models:
            return loaded
        from recsvc.adapters.compile_cache import compile_in_child
        from recsvc.adapters.compiled import CompiledModel
        from recsvc.adapters.registry import MODEL_FILE

        path = loaded.directory / MODEL_FILE
        why = compile_in_child(path, leaves=leaves)
        if why is not None:
            log.warning("compiling %s in a child process failed (%s); compiling here", path, why)
        model = CompiledModel(path, booster=loaded.booster)
        return dataclasses.replace(loaded, booster=model)

    churn = ModelHolder("churn", ctx.registry,
                        lambda loaded: ChurnScorer(native(loaded, leaves=True)),
                        metrics, ctx.known_features)
    propensity = ModelHolder(
        "propensity", ctx.registry,
        lambda loaded: PropensityScorer(native(loaded), ctx.programme),
        metrics, ctx.known_features)
    for holder in (churn, propensity):
        holder.refresh()
    # Feast's own layout read directly: proven equal to get_online_features, 20x faster
    reader = OnlineReader.from_store(ctx.store)

    def item_ids() -> list[int]:
        return list(schema.read_table(settings.data_dir, "items", ["item_id"])["item_id"]
                    .to_pylist())

    catalogue = Catalogue(reader, item_ids)
    catalogue.refresh()
    # the frequency caps: the online store's Redis, else a SQLite file the workers share
    caps = open_cap_store(settings, ctx.store)
    plane = Dataplane(reader, churn, metrics, programme=ctx.programme, propensity=propensity,
                      catalogue=catalogue, caps=caps)
    server, port, health = await create_server(address, RedemptionServicer(plane, metrics),
                                               max_concurrent_rpcs=settings.max_concurrent_rpcs,
                                               overload_lag_s=settings.overload_lag_ms / 1000,
                                               credentials=security.server_credentials(settings),
                                               interceptors=security.interceptors(settings))
    plane.prepare()
    # everything loaded so far lives as long as the process: keep the collector off it (a
    # full collection over Feast's objects took ~90 ms, the whole tail of the latency)
    gc.collect()
    gc.freeze()
    freeze_after_full_collections()
    await mark_serving(health)
    announce({"pid": os.getpid(), "port": port,
              "models": {h.name: h.current.version if h.current else None
                         for h in (churn, propensity)},
              "items": len(catalogue.items.position),
              "loop": type(asyncio.get_running_loop()).__module__.partition(".")[0]})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def orphaned() -> None:  # the supervisor was killed: do not serve on alone
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        stop.set()

    tasks = [asyncio.create_task(refresh_models([churn, propensity], catalogue,
                                                settings.model_refresh_seconds, plane.prepare)),
             asyncio.create_task(orphaned()),
             asyncio.create_task(publish_cache_stats(reader, metrics, CACHE_STATS_SECONDS))]
    await stop.wait()
    for task in tasks:
        task.cancel()
    # NOT_SERVING first (watchers told at once), calls answered for the notice, then refused
    await drain(server, health, settings.drain_notice_seconds, GRACE_SECONDS)
    caps.close()
    return 0


def _without_import_time_type_checks() -> None:
    """Make typeguard's `@typechecked` the identity in this process, before Feast is imported.

    Feast decorates its data-source and feature-view classes with it, and the decorator
    re-parses and recompiles each decorated class's module when it is imported: 4.7 s of a
    worker's 7.8 s start on this machine (cProfile of serve_worker), 14 s of start under
    load, while a worker that was killed is replaced and its peer carries every call. The
    decorator is documented as a no-op under `python -O`; a worker gets the same without
    dropping its own asserts or needing optimized bytecode on disk. It changes nothing a
    worker answers: the checks guard how Feast objects are constructed, and a worker only
    reads a store that `recsvc features` (with the checks) defined."""
    import typeguard

    def typechecked(target: Any = None, **_: Any) -> Any:
        return target if target is not None else (lambda t: t)

    typeguard.typechecked = typechecked


def run_loop(main: Coroutine[Any, Any, T], loop: str) -> T:
    """`main` run to completion on a new event loop of the kind named (Settings.event_loop)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def _worker_main(address: str, ready: Any, verbose: bool) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter)."""
    _without_import_time_type_checks()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(name)s: "
                               "%(message)s")
    try:
        code = run_loop(serve_worker(address, ready.put), load_settings().event_loop)
    except RecsvcError as exc:
        ready.put({"error": str(exc)})
        code = 2
    sys.exit(code)


def _reserve_port(host: str) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on a free port, held while the workers
    bind the same port, so no other program takes it in between."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), 0))
    return sock


def serve(address: str | None = None, metrics_port: int | None = None,
          workers: int | None = None, verbose: bool = False) -> int:
    """The supervisor: start `workers` server processes on one port, serve their metrics
    (prometheus-client's multiprocess mode, in a directory of our own), restart a worker
    that dies, and on SIGTERM drain them all."""
    import multiprocessing
    import queue
    import shutil
    import tempfile

    settings = load_settings()
    address = address or settings.grpc_address
    metrics_port = settings.metrics_port if metrics_port is None else metrics_port
    workers = workers or settings.workers
    # Before any worker imports prometheus-client (or Feast, which would make a directory of
    # its own): every worker writes its values here, the supervisor reads them all.
    metrics_dir = tempfile.mkdtemp(prefix="recsvc_metrics_")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = \
        metrics_dir
    host, _, port_text = address.rpartition(":")
    held = _reserve_port(host) if port_text == "0" else None
    if held is not None:
        address = f"{host}:{held.getsockname()[1]}"
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()

    def start() -> Any:
        proc = spawn.Process(target=_worker_main, args=(address, ready, verbose), daemon=False)
        proc.start()
        return proc

    stopping = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs = [start() for _ in range(workers)]
    try:
        first: dict[str, Any] | None = None
        serving: set[int] = set()
        for _ in range(workers):
            while True:
                try:
                    got = ready.get(timeout=1.0)
                    break
                except queue.Empty:
                    if stopping or any(p.exitcode is not None for p in procs):
                        print("recsvc serve: a worker exited before serving", file=sys.stderr)
                        return 2
            if "error" in got:
                print(f"recsvc serve: error: {got['error']}", file=sys.stderr)
                return 2
            first = first or got
            serving.add(got["pid"])
        assert first is not None
        if held is not None:
            held.close()
        if metrics_port:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=metrics_dir)
            start_http_server(metrics_port, addr=settings.metrics_address, registry=registry)
        print(f"recsvc serving recsvc.v1.RedemptionService on {address} ({workers} worker"
              f"{'s' if workers > 1 else ''}"
              + (f", metrics on http://{settings.metrics_address}:{metrics_port}/metrics)"
                 if metrics_port
                 else ")"), flush=True)
        for name, version in first["models"].items():
            print(f"  {name} model: {version or 'none (degraded)'}")
        print(f"  catalogue: {first['items']:,} items in memory; event loop: {first['loop']}")
        print(f"  try: recsvc client --address {address} recommend 66 --limit 5  "
              "(.venv/bin/recsvc in a checkout)", flush=True)
        while not stopping:
            time.sleep(0.2)
            while not ready.empty():
                got = ready.get()
                if "pid" in got:
                    serving.add(got["pid"])
                    print(f"recsvc: worker {got['pid']} serving", flush=True)
            for i, proc in enumerate(procs):
                if proc.exitcode is not None and not stopping:
                    log.error("worker %d exited with %s; starting another", proc.pid,
                              proc.exitcode)
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(proc.pid, metrics_dir)
                    procs[i] = start()
        print("recsvc: shutting down", flush=True)
        return _stop(procs, serving)
    finally:
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
        if held is not None:
            held.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _stop(procs: list[Any], serving: set[int]) -> int:
    """SIGTERM every worker, wait for their drain; 0 when all of them exited cleanly (a
    worker still starting has nothing to drain: SIGTERM ends it, and that is clean too)."""
    for proc in procs:
        if proc.exitcode is None:
            proc.terminate()
    deadline = time.monotonic() + GRACE_SECONDS + 10
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0.1))
    failed = [p for p in procs if p.exitcode != 0 and not (
        p.pid not in serving and p.exitcode == -signal.SIGTERM)]
    for proc in failed:
        log.error("worker %d exited with %s while draining", proc.pid, proc.exitcode)
    return 1 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    return serve(args.address, args.metrics_port, args.workers, args.verbose)


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gRPC service",
                       description="Serve recsvc.v1.RedemptionService (grpc.aio) with health "
                                   "checks and reflection; metrics over HTTP for Prometheus. "
                                   "SIGTERM drains: health turns NOT_SERVING, then calls get "
                                   f"{GRACE_SECONDS:.0f} s to finish.")
    p.add_argument("--address", default=None,
                   help=f"host:port to listen on (default $RECSVC_GRPC_ADDRESS or "
                        f"{GRPC_ADDRESS}; port 0 picks a free port)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port (default $RECSVC_METRICS_PORT or 9464; 0: none)")
    p.add_argument("--workers", type=int, default=None,
                   help="server processes sharing the port (default $RECSVC_WORKERS or 1); "
                        "one per core uses them all")
    p.set_defaults(func=_cmd_serve)
