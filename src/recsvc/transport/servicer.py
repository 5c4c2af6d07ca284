"""RedemptionService over gRPC: convert the request, call the dataplane, convert back."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from recsvc.app.answering import Admit
from recsvc.app.dataplane import Dataplane
from recsvc.core import fraud
from recsvc.core import nudges as core_nudges
from recsvc.defaults import CHANNELS
from recsvc.errors import DeadlineExceeded, Overloaded
from recsvc.metrics import ServiceMetrics
from recsvc.transport import bounds, converters, errors
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc

T = TypeVar("T")
# the RPCs whose answers carry `verification` (a flagged member's points activity)
VERIFIED = ("GetRedemptionHint", "BatchGetRedemptionHints", "RecommendRedemptions",
            "OptimizeCartSplit", "GetNudges")


class LoadShedder:
    """Refuses new calls with RESOURCE_EXHAUSTED while calls wait longer than `max_lag_s`.

    A tick every `interval_s` measures how late the event loop runs. A late tick alone is not
    overload: one long call (a 1,000-member batch) makes the next tick late too. grpc.aio keeps
    the calls that wait in its C core, out of asyncio's sight, so on a late tick the shedder
    asks `waiting()` (calls the server received that no handler has taken yet: channelz's
    count of calls received less the calls dispatched) and estimates a new call's wait as
    their number times the mean call time. Calls a caller cancels while they wait are never
    dispatched, so that count drifts up by them: on ticks that come on time (nothing really
    waits then) it is sampled once a second, and the least of the last samples is the drift
    taken off. After `sustained` late ticks in a row whose
    estimated wait exceeds `max_lag_s`, calls are refused until a tick comes on time again.
    Refusing costs microseconds, so a backlog drains, and callers get a fast answer to back
    off on instead of a timeout. Without `waiting` (channelz off) sustained lateness alone
    decides, and a lone caller of long calls can be refused."""

    def __init__(self, max_lag_s: float, interval_s: float = 0.01, sustained: int = 3,
                 waiting: Callable[[], int | None] | None = None) -> None:
        self.max_lag_s = max_lag_s
        self.interval_s = interval_s
        self.sustained = sustained
        self.waiting = waiting
        self.lag = 0.0
        self.late_ticks = 0
        self.call_s = 0.0  # mean duration of a call's work (exponentially weighted)
        self.drift: collections.deque[int] = collections.deque(maxlen=5)
        self._sampled = -1e9
        self.in_flight = 0  # calls being worked on (their reads awaited off the loop included)
        self._due: float | None = None  # when the pending tick is due (time.monotonic)
        self._asked: tuple[float, int | None] = (-1e9, None)  # channelz's last answer, when

    @property
    def overloaded(self) -> bool:
        """Sustained late ticks; or, between ticks, a tick overdue for as long as `sustained`
        late ones would take, with calls queued behind: calls whose reads came back while
        the loop was busy run one after another in one pass of the loop, with no tick
        between them to see it."""
        if self.late_ticks >= self.sustained:
            return True
        if self._due is None:
            return False
        overdue = time.monotonic() - self._due
        if overdue <= self.sustained * max(self.max_lag_s, self.interval_s):
            return False
        wait = self.queued_wait()
        if wait is None or wait > self.max_lag_s:
            self.lag = overdue
            return True
        return False

    def observe(self, seconds: float) -> None:
        """Record one call's duration."""
        self.call_s = seconds if self.call_s == 0 else self.call_s + 0.1 * (seconds - self.call_s)

    def queued_wait(self) -> float | None:
        """Estimated seconds a new call waits behind those already received (None: unknown):
        the calls no handler has taken yet, and those taken that wait for the loop again
        after awaiting their reads (all in flight but the one running). Channelz is asked
        at most once an interval: a busy loop asks this of every call it admits, and
        channelz's JSON took 8.5 % of the event loop's time at saturation when it answered
        each of them (py-spy)."""
        now = time.monotonic()
        if now - self._asked[0] < self.interval_s:
            queued = self._asked[1]
        else:
            queued = self.waiting() if self.waiting is not None else None
            self._asked = (now, queued)
        if queued is None:
            return None
        behind = max(queued - min(self.drift, default=0), 0) + max(self.in_flight - 1, 0)
        return behind * self.call_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            self._due = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.lag = max(loop.time() - start - self.interval_s, 0.0)
            late = self.lag > self.max_lag_s
            if late:  # only then, or once a second: asking channelz costs ~0.1 ms
                wait = self.queued_wait()
                late = wait is None or wait > self.max_lag_s
            elif self.waiting is not None and loop.time() - self._sampled >= 1.0:
                self._sampled = loop.time()
                drift = self.waiting()
                if drift is not None:
                    self.drift.append(drift)
            self.late_ticks = self.late_ticks + 1 if late else 0


class RedemptionServicer(recsvc_pb2_grpc.RedemptionServiceServicer):
    """The RPCs: each converts its request, calls the dataplane once, converts back."""

    def __init__(self, dataplane: Dataplane, metrics: ServiceMetrics) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.shedder: LoadShedder | None = None  # set by server.create_server
        self.dispatched = 0  # calls whose handler started (the shedder's count of waiting)
        # every series at 0 from the start, so rate() sees the first error of a burst
        for rpc in pb.DESCRIPTOR.services_by_name["RedemptionService"].methods_by_name:
            metrics.latency.labels(rpc)
            for code in errors.CODE_NAMES:
                metrics.requests.labels(rpc, code)
            for reason in converters.DEGRADED:
                metrics.degraded.labels(rpc, reason)
            if rpc in VERIFIED:
                for flag in (*fraud.FLAG_NAMES, "other"):
                    metrics.verification.labels(rpc, flag)
        if dataplane.programme is not None:
            p = dataplane.programme
            metrics.prime_nudges(core_nudges.KINDS, CHANNELS, [a.name for a in p.experiments.arms],
                                 *core_nudges.cap_series(p))

    async def _call(self, rpc: str, context: grpc.aio.ServicerContext, request: Any,
                    work: Callable[[Admit], Awaitable[T]]) -> T:
        """Run one RPC's work with its metrics; errors leave through the one error table.
        The request is checked against its bounds first (`bounds.check`). The work awaits
        what it must not block the event loop on (stores), and calls `admit` once that is
        done, before it takes the loop for the answer."""
        start = time.perf_counter()
        self.dispatched += 1
        failure: BaseException | None = None
        try:
            self._admit(rpc, context)
            bounds.check(request)

            def admit() -> None:
                self._admit(rpc, context)

            if self.shedder is None:
                return await work(admit)
            self.shedder.in_flight += 1
            try:
                return await work(admit)
            finally:
                self.shedder.in_flight -= 1
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        except Exception as exc:
            failure = exc
            await errors.abort(context, exc, rpc)
            raise  # abort raises; this keeps type checkers and readers certain of it
        finally:
            took = time.perf_counter() - start
            self.metrics.requests.labels(rpc, errors.code_name(failure)).inc()
            self.metrics.latency.labels(rpc).observe(took)
            if self.shedder is not None:
                self.shedder.observe(took)

    def _admit(self, rpc: str, context: grpc.aio.ServicerContext) -> None:
        """Refuse a call that must not take the event loop now: when it arrives, and again
        after its reads were awaited, before the answer is computed."""
        if self.shedder is not None and self.shedder.overloaded:
            raise Overloaded(f"{rpc}: the server is {self.shedder.lag * 1000:.0f} ms "
                             "behind; retry with backoff")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # waited past the caller's deadline:
            raise DeadlineExceeded(f"{rpc}: the deadline passed before the work started")

    async def GetRedemptionHint(self, request: Any,
                                context: Any) -> pb.GetRedemptionHintResponse:
        async def work(admit: Admit) -> pb.GetRedemptionHintResponse:
            req = converters.hint_request(request.member_id, [request.item_id], request.context,
                                          item_field="item_id")
            answer = await self.dataplane.hints_async(req, "GetRedemptionHint", admit)
            return pb.GetRedemptionHintResponse(
                hint=converters.redemption_hint(answer.hints[0]),
                **converters.stamp_fields(answer.stamp, pb.GetRedemptionHintResponse))

        return await self._call("GetRedemptionHint", context, request, work)

    async def BatchGetRedemptionHints(self, request: Any,
                                      context: Any) -> pb.BatchGetRedemptionHintsResponse:
        async def work(admit: Admit) -> pb.BatchGetRedemptionHintsResponse:
            req = converters.hint_request(request.member_id, list(request.item_ids),
                                          request.context)
            return converters.batch_hints(
                await self.dataplane.hints_async(req, "BatchGetRedemptionHints", admit))

        return await self._call("BatchGetRedemptionHints", context, request, work)

    async def RecommendRedemptions(self, request: Any,
                                   context: Any) -> pb.RecommendRedemptionsResponse:
        async def work(admit: Admit) -> pb.RecommendRedemptionsResponse:
            return converters.recommendations(await self.dataplane.recommend_async(
                converters.recommend_request(request), "RecommendRedemptions", admit))

        return await self._call("RecommendRedemptions", context, request, work)

    async def OptimizeCartSplit(self, request: Any,
                                context: Any) -> pb.OptimizeCartSplitResponse:
        async def work(admit: Admit) -> pb.OptimizeCartSplitResponse:
            return converters.cart_split(await self.dataplane.cart_split_async(
                converters.cart_request(request), "OptimizeCartSplit", admit))

        return await self._call("OptimizeCartSplit", context, request, work)

    async def GetChurnRisk(self, request: Any, context: Any) -> pb.GetChurnRiskResponse:
        async def work(admit: Admit) -> pb.GetChurnRiskResponse:
            answer = await self.dataplane.churn_risk_async(
                [request.member_id], "GetChurnRisk", admit)
            return pb.GetChurnRiskResponse(
                risk=converters.churn_risk(answer.risks[0]), horizon_days=answer.horizon_days,
                **converters.stamp_fields(answer.stamp, pb.GetChurnRiskResponse))

        return await self._call("GetChurnRisk", context, request, work)

    async def BatchGetChurnRisk(self, request: Any,
                                context: Any) -> pb.BatchGetChurnRiskResponse:
        async def work(admit: Admit) -> pb.BatchGetChurnRiskResponse:
            return converters.batch_churn_risks(await self.dataplane.churn_risk_async(
                list(request.member_ids), "BatchGetChurnRisk", admit))

        return await self._call("BatchGetChurnRisk", context, request, work)

    async def GetNudges(self, request: Any, context: Any) -> pb.GetNudgesResponse:
        async def work(admit: Admit) -> pb.GetNudgesResponse:
            # awaits the cap store: a SQLite one waits on its file lock off the event loop
            return converters.nudges(await self.dataplane.nudges_async(
                converters.nudge_request(request), "GetNudges", admit))

        return await self._call("GetNudges", context, request, work)
