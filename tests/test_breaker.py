"""The circuit breaker: a dependency that stops answering is paused, so calls degrade at once
instead of queueing behind its timeout; one probe at a time finds it back."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from recsvc.app.answering import CHURN_SERVICE
from recsvc.app.breaker import Breaker
from recsvc.app.dataplane import Dataplane
from recsvc.errors import FeatureStoreUnavailable
from recsvc.metrics import ServiceMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_open_for_the_cooldown_then_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = Breaker("store", cooldown_s=1.0, clock=clock)
    assert breaker.allow() and breaker.allow()  # closed
    breaker.failed()
    assert not breaker.closed and breaker.trips == 1
    assert not breaker.allow()  # open
    clock.now = 1.0
    assert breaker.allow()  # half-open: this caller probes
    assert not breaker.allow()  # ...and only this one
    breaker.failed()  # the probe failed: another pause, the same trip
    assert breaker.trips == 1 and not breaker.allow()
    clock.now = 2.5
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.closed and breaker.allow() and breaker.allow()


class StalledStore:
    """A Redis that accepts and never answers: each read waits out a 50 ms timeout."""

    def __init__(self) -> None:
        self.reads = 0
        self.healthy = False
        self._lock = threading.Lock()

    def read_service(self, service: str, entity_key: str,
                     ids: Sequence[int]) -> dict[str, list[Any]]:
        with self._lock:
            self.reads += 1
        if self.healthy:
            return {"member_activity__tenure_days": [100.0 for _ in ids]}
        time.sleep(0.05)
        raise FeatureStoreUnavailable("Redis did not answer within 50 ms")


def test_a_stalled_store_is_asked_once_not_once_a_call() -> None:
    """200 calls at once against a stalled store: all degraded, and the store is asked about
    once (a probe a cooldown), where each call would have waited 50 ms on one of a few
    threads. Once it answers again, the next probe closes the breaker."""
    store = StalledStore()
    plane = Dataplane(store, None, ServiceMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    plane.reads.breaker = Breaker("store", cooldown_s=0.2)

    async def calls(n: int) -> list[Any]:
        return await asyncio.gather(*(plane.reads.read_async(CHURN_SERVICE, [k], "GetChurnRisk")
                                      for k in range(n)))

    got = asyncio.run(calls(200))
    assert all(r.degraded == ("feature_store_unavailable",) and not r.raw for r in got)
    # the calls that found the breaker closed were queued for the executor's threads; those
    # the threads took before the first failure asked the store, the rest found it paused
    threads = min(32, (os.cpu_count() or 1) + 4)  # asyncio.to_thread's default executor
    assert store.reads <= threads and plane.reads.breaker.trips == 1
    store.healthy = True
    time.sleep(0.25)
    probe = asyncio.run(calls(1))  # the cooldown is over: this call probes, and closes it
    assert not probe[0].degraded and plane.reads.breaker.closed
    again = asyncio.run(calls(5))
    assert all(not r.degraded for r in again) and store.reads <= threads + 6
