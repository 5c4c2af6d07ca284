"""The members' online features an answer reads, behind the store's breaker.

A store that fails, or is paused after failing, gives no features and a degraded reason: the
answer goes on from defaults. On the event loop (`read_async`) what can be read without waiting
is read at once and the rest on a thread, so a store that hangs holds up only the calls that
wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from recsvc.app.answers import FEATURE_STORE_UNAVAILABLE, Read
from recsvc.app.breaker import Breaker
from recsvc.app.ports import FeatureSource
from recsvc.errors import FeatureStoreUnavailable
from recsvc.metrics import ServiceMetrics

log = logging.getLogger(__name__)

UNAVAILABLE_READ = Read({}, (FEATURE_STORE_UNAVAILABLE,))


class FeatureReads:
    """The online read of the members' features for every answer, with its breaker and the
    read latency metric."""

    def __init__(self, features: FeatureSource, metrics: ServiceMetrics) -> None:
        self.features = features
        self.metrics = metrics
        # a store that stops answering is paused, so calls degrade at once instead of each
        # waiting out its timeout (breaker.py)
        self.breaker = Breaker("the online feature store")

    def read(self, service: str, ids: Sequence[int], rpc: str) -> Read:
        """The members' features of `service`; a store that fails, or is paused after
        failing (`breaker`): none, degraded."""
        if not self.breaker.allow():
            return UNAVAILABLE_READ
        return self._read_store(service, ids, rpc)

    def _read_store(self, service: str, ids: Sequence[int], rpc: str) -> Read:
        if self.breaker.paused:  # it failed while this call waited for a thread
            return UNAVAILABLE_READ
        start = time.perf_counter()
        try:
            got = Read(self.features.read_service(service, "member_id", ids))
            self.breaker.succeeded()
        except FeatureStoreUnavailable as exc:
            self.breaker.failed()
            log.warning("%s: online store unavailable, answering from defaults: %s", rpc, exc)
            got = UNAVAILABLE_READ
        self.metrics.feature_read.labels(service).observe(time.perf_counter() - start)
        return got

    async def read_async(self, service: str, ids: Sequence[int], rpc: str) -> Read:
        """`read` for the event loop: what the source can read without waiting is read at
        once (`read_nowait`, when it has one: rows held in memory, SQLite's file when no
        writer holds its lock); what must wait on the store is read on a thread."""
        nowait = getattr(self.features, "read_nowait", None)
        held = nowait(service, "member_id", ids) if nowait is not None else None
        if held is not None:
            return Read(held)
        if not self.breaker.allow():  # paused: no thread, no wait
            return UNAVAILABLE_READ
        return await asyncio.to_thread(self._read_store, service, ids, rpc)
