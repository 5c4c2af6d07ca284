"""Where a batch job's partitions run: in this process, or on a Dask cluster.

`--engine local` (the default) runs a job as one process and needs no Dask. `--engine dask`
splits the job's work into partitions (ranges of member or item ids) and runs each on a worker
of a `dask.distributed` cluster: the one at `--scheduler ADDRESS`, or, without an address, a
`LocalCluster` of one single-threaded worker process per core of this machine. A partition is
a plain function of plain arguments (the settings, names, a range): the worker opens what it
needs itself (the feature store, the online store, the registry), once per worker process, and
reads its own rows, so no table crosses the scheduler. The workers therefore see the same data
directory and stores as the caller: on one machine they do; on several, DATA_DIR is a shared
volume and the stores are network services (deploy/dask/ shows one).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from recsvc.cliargs import positive_int
from recsvc.errors import ConfigError, EngineUnavailable

ENGINES = ("local", "dask")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, eq=False)  # one engine is one cluster: compared by identity
class Engine:
    """Runs a function over partitions, here (`client` None) or on a Dask cluster."""

    name: str
    client: Any = None  # a dask.distributed Client
    # how long a map waits with no live worker (workers of a new cluster still starting, a
    # worker restarted by its nanny) before it gives up: work never waits for ever
    no_worker_wait_s: float = 120.0

    @property
    def workers(self) -> int:
        """Worker threads the work can spread over (1 for the local engine)."""
        if self.client is None:
            return 1
        return max(1, sum(self.client.nthreads().values()))

    def parts(self, count: int, at_most: int) -> int:
        """How many ranges `count` things are cut into: at most `at_most` things a range, and
        at least one range a worker."""
        return max(self.workers, -(-count // at_most))

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def map(self, fn: Callable[..., R], parts: Sequence[T], *,
            on_done: Callable[[R], Any] | None = None, **shared: Any) -> list[R]:
        """[fn(part, **shared) for part in parts], in order; `on_done(result)` as each one
        finishes (for progress). A partition's exception is raised here, as it was raised."""
        call = functools.partial(fn, **shared) if shared else fn
        if self.client is None:
            out = []
            for part in parts:
                out.append(call(part))
                if on_done is not None:
                    on_done(out[-1])
            return out
        futures = self.client.map(call, list(parts), pure=False)
        try:
            for future in self._completed(futures):
                result = future.result()  # raises the partition's own exception
                if on_done is not None:
                    on_done(result)
            return list(self.client.gather(futures))
        finally:
            self.client.cancel(futures)

    def _completed(self, futures: list[Any], poll_s: float = 1.0) -> Iterator[Any]:
        """The futures as they finish; EngineUnavailable once the cluster has had no live
        worker for `no_worker_wait_s` with work left (a scheduler whose workers all died would
        otherwise keep the futures pending for ever)."""
        from distributed import wait

        pending = set(futures)
        idle_since: float | None = None
        while pending:
            try:
                with self.client.as_current():  # wait() asks for the current client
                    done = wait(list(pending), timeout=poll_s,
                                return_when="FIRST_COMPLETED").done
            except TimeoutError:
                done = set()
            yield from done
            pending -= done
            if not pending or done or self.client.nthreads():
                idle_since = None
                continue
            now = time.monotonic()
            idle_since = now if idle_since is None else idle_since
            if now - idle_since >= self.no_worker_wait_s:
                raise EngineUnavailable(
                    f"the Dask cluster has had no live worker for {now - idle_since:.0f} s "
                    f"with {len(pending)} of {len(futures)} partitions left")


LOCAL = Engine("local")

# no dashboard, and the scheduler's HTTP routes (health, metrics) on a free port rather than
# 8787, which another cluster on the machine may hold
LOCAL_CLUSTER_QUIET: dict[str, Any] = {"dashboard_address": ":0",
                                       "scheduler_kwargs": {"dashboard": False}}


@contextmanager
def open_engine(name: str = "local", scheduler: str | None = None,
                workers: int | None = None) -> Iterator[Engine]:
    """The engine a job runs on, closed after it. `scheduler` (host:port or tcp://...) is an
    existing Dask cluster; without one, `dask` starts a LocalCluster of `workers` processes
    (default: this machine's cores) for the job and stops it after."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    if name == "local":
        if scheduler is not None:
            raise ConfigError("--scheduler is for --engine dask")
        yield LOCAL
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - dask[distributed] is a dependency
        raise ConfigError(f"--engine dask needs dask.distributed: {exc}") from None
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # -v shows them
        # a line per worker started and stopped, and the comms closed at shutdown (importing
        # distributed sets its logger to INFO, so after the import)
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler is not None:
        address = scheduler if "://" in scheduler else f"tcp://{scheduler}"
        try:
            client = Client(address, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"no Dask scheduler answers at {address}: {exc}") from None
        with client:
            yield Engine("dask", client)
        return
    n = workers or os.cpu_count() or 1
    # one single-threaded process per core: the partitions are numpy/pyarrow work that holds
    # the GIL in places, and LightGBM and the writers take a core each
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, silence_logs=40,
                      **LOCAL_CLUSTER_QUIET) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield Engine("dask", client)


def add_engine_args(p: Any) -> None:
    """`--engine` and `--scheduler` for a batch command."""
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process (default); dask: partitions on a Dask cluster")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="the Dask scheduler (host:port) for --engine dask; without it, a "
                        "LocalCluster of this machine's cores for the job")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="worker processes of that LocalCluster (default: the cores)")


_HELD: dict[tuple[str, str], tuple[str, Any]] = {}


def worker_held(kind: str, settings: Any, job: str, open_: Callable[[], T],
                renew: Callable[[T], T] | None = None) -> T:
    """What a worker process keeps between the partitions it runs (a store, a model): opened
    once for these settings (a pydantic model), and again when a new job starts (`job`: the
    caller's token), or passed to `renew` then: opening it for every partition would cost more
    than the partition, and a worker outlives the jobs whose definitions change."""
    key = (kind, settings.model_dump_json())
    held = _HELD.get(key)
    if held is None or (held[0] != job and renew is None):
        value = open_()
    else:
        value = held[1] if held[0] == job else renew(held[1])  # type: ignore[misc]
    _HELD[key] = (job, value)
    return value


def id_ranges(low: int, high: int, parts: int) -> list[tuple[int, int]]:
    """[low, high] as up to `parts` half-open ranges [a, b) of nearly equal width."""
    if high < low:
        return []
    span = high - low + 1
    parts = max(1, min(parts, span))
    edges = [low + span * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]
