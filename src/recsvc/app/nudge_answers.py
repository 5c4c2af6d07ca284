"""GetNudges: the reminders due to a member on one channel, within the frequency caps.

The due nudges come from the core (`recsvc.core.nudges`) over the member's profile and ranked
options (`Answering`); the cap store reserves their delivery atomically. A cap store that does
not answer, or is paused by its breaker after failing, withholds them all (degraded), never a
cap exceeded.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from recsvc.app.answering import MEMBER_SERVICE, Admit, Answering, admitted, version
from recsvc.app.answers import CAP_STORE_UNAVAILABLE, NudgeAnswer, NudgeRequest, Read
from recsvc.app.breaker import Breaker
from recsvc.app.ports import CapStore
from recsvc.app.profiles import Context
from recsvc.config import Arm
from recsvc.core import nudges as core_nudges
from recsvc.core import ranking
from recsvc.defaults import CHANNELS
from recsvc.errors import CapStoreUnavailable, InvalidArgument

log = logging.getLogger(__name__)


class _CapsPaused(CapStoreUnavailable):
    """The cap store is paused by its breaker: refused without asking it."""


@dataclass(frozen=True)
class _PendingNudges:
    """A GetNudges call between its due nudges and the cap store's answer."""

    req: NudgeRequest
    rpc: str
    arm: Arm
    ctx: Context
    model: str  # the version of the propensity model that ranked the options
    degraded: list[str]
    now: dt.datetime
    due: list[core_nudges.Nudge]
    reservations: list[core_nudges.Reservation]


class NudgeAnswers:
    """GetNudges over the answers' shared steps (`shared`) and the frequency-cap store, which
    its own breaker pauses after a failure."""

    def __init__(self, shared: Answering, caps: CapStore | None) -> None:
        self.shared = shared
        self.caps = caps
        self.breaker = Breaker("the frequency-cap store")

    def answer(self, req: NudgeRequest, rpc: str) -> NudgeAnswer:
        """The reminders due to the member now on one channel, most urgent first, within the
        frequency caps: each one delivered counts against its caps (unless a dry run). A cap
        store that does not answer withholds them all (degraded), never a cap exceeded.

        Blocks on the cap store: the batch job's way. The service's is `answer_async`."""
        pending = self._due(req, rpc)
        if isinstance(pending, NudgeAnswer):
            return pending
        try:
            outcomes = self._cap_store().reserve(req.member_id, pending.reservations,
                                                 pending.now, dry_run=req.dry_run)
        except CapStoreUnavailable as exc:
            return self._capped(pending, self._caps_failed(exc))
        self.breaker.succeeded()
        return self._capped(pending, outcomes)

    async def answer_async(self, req: NudgeRequest, rpc: str,
                           admit: Admit = admitted) -> NudgeAnswer:
        """`answer` for the event loop: the member's features (`read_async`) and the cap store
        (`CapStore.reserve_async`: SQLite's transaction on its own thread) are awaited, so
        other calls go on while they wait."""
        read = await self.shared.reads.read_async(MEMBER_SERVICE, [req.member_id], rpc)
        admit()
        pending = self._due(req, rpc, read)
        if isinstance(pending, NudgeAnswer):
            return pending
        try:
            outcomes = await self._cap_store().reserve_async(
                req.member_id, pending.reservations, pending.now, dry_run=req.dry_run)
        except CapStoreUnavailable as exc:
            return self._capped(pending, self._caps_failed(exc))
        self.breaker.succeeded()
        return self._capped(pending, outcomes)

    def _caps_failed(self, exc: CapStoreUnavailable) -> CapStoreUnavailable:
        """A cap store that did not answer is paused (the breaker's own refusal, or no store
        configured, is no new failure of the store)."""
        if self.caps is not None and not isinstance(exc, _CapsPaused):
            self.breaker.failed()
        return exc

    def _cap_store(self) -> CapStore:
        if self.caps is None:
            raise CapStoreUnavailable("no frequency-cap store is configured")
        if not self.breaker.allow():
            raise _CapsPaused("paused after failing to answer (it is probed again within "
                              f"{self.breaker.cooldown_s:.1f} s)")
        return self.caps

    def _due(self, req: NudgeRequest, rpc: str,
             read: Read | None = None) -> _PendingNudges | NudgeAnswer:
        """The nudges due and their cap reservations; the answer itself when none is due."""
        p, catalogue, arms = self.shared.configured()
        arm = self.shared.member_arm(arms, req.member_id, req.arm)
        if req.channel not in CHANNELS:
            raise InvalidArgument("channel", f"must be one of {list(CHANNELS)}, got "
                                             f"{req.channel!r}")
        items = catalogue.items
        degraded: list[str] = []
        ctx = self.shared.context(req.member_id, MEMBER_SERVICE, req.points_balance, degraded, rpc,
                            read)
        served, scorer = self.shared.scorer(ctx, items, req.surface, degraded, memo=True)

        def rank(member: ranking.Member, affordable_only: bool,
                 limit: int) -> list[ranking.Option]:
            return ranking.recommend(p, arm, member, items.core, scorer, limit=limit,
                                     affordable_only=affordable_only)

        now = dt.datetime.fromtimestamp(self.shared.clock(), dt.UTC)
        due = core_nudges.due(p, ctx.member, ctx.points, now, rank)
        model = version(served)
        if not due:
            return NudgeAnswer([], [], stamp=self.shared.stamp(rpc, arm, model, degraded, ctx))
        return _PendingNudges(req, rpc, arm, ctx, model, degraded, now, due,
                              [core_nudges.reservation(p, n, req.channel) for n in due])

    def _capped(self, pending: _PendingNudges,
                outcomes: list[core_nudges.CapOutcome] | CapStoreUnavailable) -> NudgeAnswer:
        """The answer from the cap store's outcomes, or its failure (all withheld)."""
        req, rpc, arm, ctx = pending.req, pending.rpc, pending.arm, pending.ctx
        degraded = pending.degraded
        if isinstance(outcomes, CapStoreUnavailable):
            log.warning("%s: frequency caps unavailable, %d nudge(s) withheld: %s", rpc,
                        len(pending.due), outcomes)
            degraded.append(CAP_STORE_UNAVAILABLE)
            return NudgeAnswer([], [], stamp=self.shared.stamp(rpc, arm, pending.model, degraded,
                                                         ctx))
        delivered, withheld, dropped = core_nudges.apply(pending.due, outcomes)
        if not req.dry_run:
            for n in delivered:
                self.shared.metrics.nudges.labels(n.kind, req.channel, arm.name).inc()
            for c in withheld:
                self.shared.metrics.nudges_capped.labels(c.kind, c.cap).inc()
            for c in dropped:
                self.shared.metrics.nudge_options_capped.labels(c.kind, c.cap).inc()
        return NudgeAnswer(delivered, withheld,
                           stamp=self.shared.stamp(rpc, arm, pending.model, degraded, ctx))
