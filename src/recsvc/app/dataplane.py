"""The service's one core: validates, reads features, scores, degrades; no gRPC in here.

The servicer converts a request, calls one method here and converts the answer back. Every
dependency failure becomes a degraded answer (with its reason) rather than a failed call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recsvc.adapters.model_holder import ModelHolder, Served
from recsvc.app.answers import (
    CAP_STORE_UNAVAILABLE,
    FEATURE_STORE_UNAVAILABLE,
    NO_MODEL,
    CartAnswer,
    CartRequest,
    ChurnAnswer,
    HintAnswer,
    HintRequest,
    ItemHint,
    NudgeAnswer,
    NudgeRequest,
    Read,
    RecommendAnswer,
    RecommendRequest,
    Risk,
    Stamp,
)
from recsvc.app.breaker import Breaker
from recsvc.app.catalogue import Catalogue, Items, Prepared, read_columns
from recsvc.app.ports import CapStore, FeatureSource, PropensityModel
from recsvc.app.profiles import Context, Profiles
from recsvc.config import Arm, Programme
from recsvc.core import cart, fraud, ranking, redemption, segments
from recsvc.core import catalogue as core_catalogue
from recsvc.core import index as idx
from recsvc.core import nudges as core_nudges
from recsvc.core.experiments import ArmAssigner, hint_threshold
from recsvc.core.index import IndexFactors
from recsvc.core.redemption import Reason
from recsvc.defaults import CHANNELS, DEFAULT_RECOMMENDATIONS, MAX_RECOMMENDATIONS
from recsvc.errors import (
    CapStoreUnavailable,
    FeatureStoreUnavailable,
    InvalidArgument,
    NotFound,
)
from recsvc.metrics import ServiceMetrics
from recsvc.ml.scoring import ChurnScorer

log = logging.getLogger(__name__)

# the feature services each answer reads a member's features from
HINT_SERVICE = "hint_v1"
MEMBER_SERVICE = "redemption_v1"
CHURN_SERVICE = "churn_v1"
MAX_CHURN_BATCH = 1000
MAX_HINT_BATCH = 100
WANTED_ITEMS = 5  # the cart's advice compares the points' value here with these items'
TOP_DRIVERS = 3


Admit = Callable[[], None]
"""Raises when a call must not go on (the server is overloaded, the deadline passed)."""


def _admitted() -> None:
    """Every call goes on (outside a server)."""


def _check_members(member_ids: Sequence[int]) -> None:
    if not member_ids:
        raise InvalidArgument("member_ids", "at least one member id is required")
    if len(member_ids) > MAX_CHURN_BATCH:
        raise InvalidArgument("member_ids", f"at most {MAX_CHURN_BATCH} per call, got "
                                            f"{len(member_ids)}")
    for i, member in enumerate(member_ids):
        _check_id(f"member_ids[{i}]", member)


def _check_id(name: str, value: int) -> None:
    """For callers that reach the dataplane without bounds.check (the batch jobs)."""
    if value < 1:
        raise InvalidArgument(name, f"must be >= 1 (ids start at 1), got {value}")


UNAVAILABLE_READ = Read({}, (FEATURE_STORE_UNAVAILABLE,))


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


def _version(served: Served | None) -> str:
    """The served model's version, "" when no model answers."""
    return served.version if served is not None else ""


class Dataplane:
    def __init__(self, features: FeatureSource, churn: ModelHolder,
                 metrics: ServiceMetrics, *, programme: Programme | None = None,
                 propensity: ModelHolder | None = None,
                 catalogue: Catalogue | None = None,
                 caps: CapStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.features = features
        # a store that stops answering is paused, so calls degrade at once instead of each
        # waiting out its timeout (breaker.py)
        self.store_breaker = Breaker("the online feature store")
        self.caps_breaker = Breaker("the frequency-cap store")
        self.churn = churn
        self.metrics = metrics
        self.programme = programme
        self.propensity = propensity
        self.catalogue = catalogue
        self.caps = caps
        self.clock = clock
        self.arms = ArmAssigner(programme.experiments) if programme else None
        self._profiles = Profiles(programme)
        self._prepared_items: Prepared | None = None

    # -- what every member-facing answer shares ----------------------------------------------
    def _configured(self) -> tuple[Programme, Catalogue, ArmAssigner]:
        if self.programme is None or self.catalogue is None or self.arms is None:
            raise NotFound("redemption answers are not configured in this service")
        return self.programme, self.catalogue, self.arms

    def _arm(self, arms: ArmAssigner, member_id: int, forced: str) -> Arm:
        _check_id("member_id", member_id)
        arm = arms.named(forced) if forced else arms.arm(member_id)
        if arm is None:
            raise InvalidArgument("context.experiment_arm", f"no arm named {forced!r}")
        return arm

    def read(self, service: str, ids: Sequence[int], rpc: str) -> Read:
        """The members' features of `service`; a store that fails, or is paused after
        failing (`store_breaker`): none, degraded."""
        if not self.store_breaker.allow():
            return UNAVAILABLE_READ
        return self._read_store(service, ids, rpc)

    def _read_store(self, service: str, ids: Sequence[int], rpc: str) -> Read:
        if self.store_breaker.paused:  # it failed while this call waited for a thread
            return UNAVAILABLE_READ
        start = time.perf_counter()
        try:
            got = Read(self.features.read_service(service, "member_id", ids))
            self.store_breaker.succeeded()
        except FeatureStoreUnavailable as exc:
            self.store_breaker.failed()
            got = self._unavailable(rpc, exc)
        self.metrics.feature_read.labels(service).observe(time.perf_counter() - start)
        return got

    @staticmethod
    def _unavailable(rpc: str, exc: FeatureStoreUnavailable) -> Read:
        log.warning("%s: online store unavailable, answering from defaults: %s", rpc, exc)
        return UNAVAILABLE_READ

    async def read_async(self, service: str, ids: Sequence[int], rpc: str) -> Read:
        """`read` for the event loop: what the source can read without waiting is read at
        once (`read_nowait`, when it has one: rows held in memory, SQLite's file when no
        writer holds its lock); what must wait on the store is read on a thread, so a store
        that hangs holds up only the calls that wait for it."""
        nowait = getattr(self.features, "read_nowait", None)
        held = nowait(service, "member_id", ids) if nowait is not None else None
        if held is not None:
            return Read(held)
        if not self.store_breaker.allow():  # paused: no thread, no wait
            return UNAVAILABLE_READ
        return await asyncio.to_thread(self._read_store, service, ids, rpc)

    def prepare(self) -> None:
        """Prepare the catalogue load being served (its index factors, the propensity model's
        item block) ahead of the answers: the server calls this off the event loop after
        every refresh, so no answer pays for a new load."""
        if self.catalogue is None or self.programme is None:
            return
        items = self.catalogue.items
        self._prepared(items)
        served = self.propensity.current if self.propensity else None
        warm = getattr(served.scorer, "prepare", None) if served is not None else None
        if warm is not None:
            warm(items, items.columns, len(items.core))

    def _prepared(self, items: Items) -> Prepared:
        """`items` prepared for answers (once a catalogue load)."""
        assert self.programme is not None
        held = self._prepared_items
        if held is None or held.items is not items:
            held = self._prepared_items = Prepared.build(self.programme, items)
        return held

    def _factors(self, ctx: Context, items: Items,
                 positions: npt.NDArray[np.int64] | None = None, *,
                 demand: int | None = None) -> IndexFactors:
        """The member's index factors for the items at `positions` (None: every item), from
        the load's item factors and the member's behaviour weight, both kept; `demand`: the
        points the member is taken to be ready to spend, when not the balance."""
        assert self.programme is not None
        member = ctx.member if demand is None else dataclasses.replace(ctx.member,
                                                                        balance=demand)
        return ranking.member_factors(self.programme, member, items.core, positions,
                                      item=self._prepared(items).factors, weight=ctx.behaviour)

    def _context(self, member_id: int, service: str, balance: int | None,
                 degraded: list[str], rpc: str, read: Read | None) -> Context:
        """The profile the core works with from the member's features (`read`, or read now;
        a store failure: a cold start, degraded); `balance` is the caller's live balance, if
        it sent one. Kept between calls (`Profiles`) while the member's features read the
        same and none of the member's points lapse."""
        if balance is not None and balance < 0:
            raise InvalidArgument("context.points_balance", f"must be >= 0, got {balance}")
        if read is None:
            read = self.read(service, [member_id], rpc)
        degraded.extend(read.degraded)
        assert self.programme is not None
        return self._profiles.get((service, member_id, balance), read.raw, balance,
                                  dt.datetime.fromtimestamp(self.clock(), dt.UTC))

    def _propensity(self, ctx: Context, items: Items, positions: npt.NDArray[np.int64],
                    surface: str, served: Served, factors: IndexFactors | None = None,
                    demand: int | None = None) -> npt.NDArray[np.float64]:
        """P(redeem within 7 days) of the member for the items at `positions`, from the
        member's index factors for them (computed here when the caller has none); `demand`:
        the balance the model sees, when not the member's (a cold start's default)."""
        assert self.programme is not None
        if factors is None:
            factors = self._factors(ctx, items, positions, demand=demand)
        model: PropensityModel = served.scorer
        balance = float(ctx.member.balance if demand is None else demand)
        start = time.perf_counter()
        got = model.score_items(items, items.columns, len(items.core), positions, ctx.features,
                                ctx.model_inputs, balance, surface, factors)
        self.metrics.predict.labels("propensity").observe(time.perf_counter() - start)
        return got

    # -- the RPCs ------------------------------------------------------------------------------
    def hints(self, req: HintRequest, rpc: str, read: Read | None = None) -> HintAnswer:
        """Product-page hints for up to 100 items, in request order (`read`: the member's
        hint_v1 features, when read ahead)."""
        p, catalogue, arms = self._configured()
        arm = self._arm(arms, req.member_id, req.arm)
        if not req.item_ids:
            raise InvalidArgument("item_ids", "at least one item id is required")
        if len(req.item_ids) > MAX_HINT_BATCH:
            raise InvalidArgument("item_ids", f"at most {MAX_HINT_BATCH} per call, got "
                                              f"{len(req.item_ids)}")
        items = catalogue.items  # one load for the whole request
        found = []
        for k, item in enumerate(req.item_ids):
            at = items.position.get(int(item))
            if at is None:
                where = "item_id" if req.item_field == "item_id" else f"{req.item_field}[{k}]"
                raise NotFound(f"{where}: no item {item}")
            found.append(at)
        degraded: list[str] = []
        ctx = self._context(req.member_id, HINT_SERVICE, req.points_balance, degraded, rpc, read)
        served = self.propensity.current if self.propensity else None
        if served is None:
            degraded.append(NO_MODEL)
        threshold = hint_threshold(arm, p.index)
        out = (self._one_hint(ctx, items, found[0], req.surface, served, threshold)
               if len(found) == 1 else
               self._many_hints(ctx, items, np.asarray(found, dtype=np.int64), req.surface,
                                served, threshold))
        better = sum(h.hint.points_better for h in out)  # counted once a call, not once a hint
        for label, n in (("true", better), ("false", len(out) - better)):
            if n:
                self.metrics.hints.labels(arm.name, label).inc(n)
        return HintAnswer(out, stamp=self._stamp(rpc, arm, _version(served), degraded, ctx))

    def _one_hint(self, ctx: Context, items: Items, k: int, surface: str,
                  served: Served | None, threshold: float) -> list[ItemHint]:
        """The hint for the item at position `k`, in plain numbers: the product page's call."""
        assert self.programme is not None
        p, prep, member = self.programme, self._prepared(items), ctx.member
        factors = idx.pair_factors(
            p.index, value_coeff=prep.value_coefficient[k], vacuum=prep.vacuum[k],
            points_price=prep.points_price[k], item_discount=prep.discount[k],
            balance=member.balance, behaviour=ctx.behaviour, high_spender=member.high_spender)
        probability = None
        if served is not None:
            model: PropensityModel = served.scorer
            start = time.perf_counter()
            probability = model.score_item(items, items.columns, len(items.core), k,
                                           ctx.features, ctx.model_inputs,
                                           float(member.balance), surface, factors)
            self.metrics.predict.labels("propensity").observe(time.perf_counter() - start)
        in_stock = prep.in_stock[k]
        hint = redemption.pair_hint(
            p, factors, cash_price_minor=prep.cash_price[k], points_price=prep.points_price[k],
            item_discount=prep.discount[k], balance=member.balance, threshold=threshold,
            tier_multiplier=member.tier_multiplier, expiring_points=member.expiring_points,
            propensity=probability, cold_start=ctx.cold, in_stock=in_stock)
        alternates = () if in_stock else self._alternates(
            ctx, items, np.array([k], dtype=np.int64), surface, served)[0]
        return [ItemHint(prep.item_id[k], prep.points_price[k], hint, probability, alternates)]

    def _many_hints(self, ctx: Context, items: Items, positions: npt.NDArray[np.int64],
                    surface: str, served: Served | None, threshold: float) -> list[ItemHint]:
        """The hints for the items at `positions`, computed as columns."""
        assert self.programme is not None
        p, c = self.programme, items.core
        factors = self._factors(ctx, items, positions)
        probabilities = None
        if served is not None:
            probabilities = self._propensity(ctx, items, positions, surface, served, factors)
        stock = c.stock[positions]
        hints = redemption.hints(
            p, factors, market_price_minor=c.market_price_minor[positions],
            points_price=c.points_price[positions],
            item_discount=c.discount_coefficient[positions], balance=ctx.member.balance,
            threshold=threshold, tier_multiplier=ctx.member.tier_multiplier,
            expiring_points=ctx.member.expiring_points, propensity=probabilities,
            cold_start=ctx.cold, in_stock=stock > 0)
        # alternates only for the items out of stock, so an in-stock hint costs nothing more
        empty = np.flatnonzero(stock <= 0)
        alternates = dict(zip(empty.tolist(), self._alternates(
            ctx, items, positions[empty], surface, served), strict=True)) if len(empty) else {}
        probs = [None] * len(positions) if probabilities is None else probabilities.tolist()
        return [ItemHint(int(c.item_id[k]), int(c.points_price[k]), h, prob, alternates.get(j, ()))
                for j, (k, h, prob) in enumerate(zip(positions.tolist(), hints, probs,
                                                     strict=True))]

    def _alternates(self, ctx: Context, items: Items, targets: npt.NDArray[np.int64],
                    surface: str, served: Served | None,
                    ) -> list[tuple[core_catalogue.Alternate, ...]]:
        """In-stock alternates for the out-of-stock items at `targets`, with the member's
        propensity for them when a model answers."""
        assert self.programme is not None
        scorer: core_catalogue.Propensity | None = None
        if served is not None:
            def scorer(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
                return self._propensity(ctx, items, positions, surface, served)
        return core_catalogue.alternates(self.programme, items.similar, targets,
                                         propensity=scorer)

    def recommend(self, req: RecommendRequest, rpc: str,
                  read: Read | None = None) -> RecommendAnswer:
        """The best ways to spend the member's points: ranked, explained options."""
        p, catalogue, arms = self._configured()
        arm = self._arm(arms, req.member_id, req.arm)
        limit = req.limit or DEFAULT_RECOMMENDATIONS
        if not 1 <= limit <= MAX_RECOMMENDATIONS:
            raise InvalidArgument("limit", f"must be 0 (for {DEFAULT_RECOMMENDATIONS}) to "
                                           f"{MAX_RECOMMENDATIONS}, got {req.limit}")
        if req.max_points_price < 0:
            raise InvalidArgument("filters.max_points_price", "must be >= 0 (0: no limit)")
        items = catalogue.items
        known = set(items.core.category.tolist())
        for k, category in enumerate(req.categories):
            if category not in known:
                # the valid names in the answer: a caller learns them from the first mistake
                raise InvalidArgument(f"filters.categories[{k}]",
                                      f"no category {category!r}; one of "
                                      f"{sorted(c for c in known if c)}")
        degraded: list[str] = []
        ctx = self._context(req.member_id, MEMBER_SERVICE, req.points_balance, degraded, rpc,
                            read)
        # a member the store does not know, with no live balance from the caller, is ranked as
        # the programme's default member (ready to spend cold_start_points_demand points: the
        # index's demand match and the model's balance); the answer keeps the real balance
        demand = (p.index.cold_start_points_demand if ctx.cold and req.points_balance is None
                  else None)
        factors = self._factors(ctx, items, demand=demand)
        served, scorer = self._scorer(ctx, items, req.surface, degraded, factors=factors,
                                      demand=demand)
        options = ranking.recommend(
            p, arm, ctx.member, items.core, scorer, limit=limit, categories=req.categories,
            max_points_price=req.max_points_price, affordable_only=req.affordable_only,
            factors=factors, cold_start=ctx.cold)
        dated = [(at, pts) for at, pts in ctx.points.buckets if at != cart.NO_EXPIRY]
        return RecommendAnswer(
            options, ranking.unlocks_in_reach(p, ctx.member), ctx.member.balance,
            ctx.member.expiring_points, dated[0][0] if dated else None,
            stamp=self._stamp(rpc, arm, _version(served), degraded, ctx))

    def _scorer(self, ctx: Context, items: Items, surface: str, degraded: list[str], *,
                memo: bool = False, factors: IndexFactors | None = None,
                demand: int | None = None,
                ) -> tuple[Served | None, ranking.Propensity | None]:
        """The propensity model being served and the ranking's scorer over item positions;
        (None, None), degraded, when there is no model: the index ranks alone. With `memo`,
        an item is scored once however often the call ranks it (each nudge ranks with its own
        budget). `factors`: the member's over the whole catalogue, when computed already."""
        served = self.propensity.current if self.propensity else None
        if served is None:
            degraded.append(NO_MODEL)
            return None, None
        model = served

        def scorer(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            return self._propensity(ctx, items, positions, surface, model,
                                    None if factors is None else ranking.take(factors, positions),
                                    demand)

        if not memo:
            return served, scorer
        known = np.full(len(items.core), np.nan)

        def remembered(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            todo = positions[np.isnan(known[positions])]
            if len(todo):
                known[todo] = scorer(todo)
            return known[positions]

        return served, remembered

    def cart_split(self, req: CartRequest, rpc: str, read: Read | None = None) -> CartAnswer:
        """The order's points/cash split under every rule, points taken earliest-lapsing first,
        and advice when the member's wanted items would make more of the points."""
        p, catalogue, arms = self._configured()
        arm = self._arm(arms, req.member_id, req.arm)
        if not req.lines:
            raise InvalidArgument("lines", "at least one line is required")
        degraded: list[str] = []
        ctx = self._context(req.member_id, MEMBER_SERVICE, req.points_balance, degraded, rpc,
                            read)
        # "wanted": the member's best-ranked items the index says points are better for
        wanted = ranking.recommend(p, arm, ctx.member, catalogue.items.core,
                                   limit=WANTED_ITEMS, affordable_only=True)
        worth = [o.factors.value_coefficient for o in wanted
                 if Reason.INDEX_ABOVE_THRESHOLD in o.reasons and not o.factors.vacuum]
        split = cart.optimize_cart(p, req.lines, ctx.points,
                                   keep_value_per_point=max(worth) if worth else None)
        self.metrics.cart_points.labels(arm.name, split.binding_rule).inc(split.points_used)
        return CartAnswer(split, stamp=self._stamp(rpc, arm, "", degraded, ctx))

    def nudges(self, req: NudgeRequest, rpc: str) -> NudgeAnswer:
        """The reminders due to the member now on one channel, most urgent first, within the
        frequency caps: each one delivered counts against its caps (unless a dry run). A cap
        store that does not answer withholds them all (degraded), never a cap exceeded.

        Blocks on the cap store: the batch job's way. The service's is `nudges_async`."""
        pending = self._due_nudges(req, rpc)
        if isinstance(pending, NudgeAnswer):
            return pending
        try:
            outcomes = self._cap_store().reserve(req.member_id, pending.reservations,
                                                 pending.now, dry_run=req.dry_run)
        except CapStoreUnavailable as exc:
            return self._capped_nudges(pending, self._caps_failed(exc))
        self.caps_breaker.succeeded()
        return self._capped_nudges(pending, outcomes)

    async def nudges_async(self, req: NudgeRequest, rpc: str,
                           admit: Admit = _admitted) -> NudgeAnswer:
        """`nudges` for the event loop: the member's features (`read_async`) and the cap store
        (`CapStore.reserve_async`: SQLite's transaction on its own thread) are awaited, so
        other calls go on while they wait."""
        read = await self.read_async(MEMBER_SERVICE, [req.member_id], rpc)
        admit()
        pending = self._due_nudges(req, rpc, read)
        if isinstance(pending, NudgeAnswer):
            return pending
        try:
            outcomes = await self._cap_store().reserve_async(
                req.member_id, pending.reservations, pending.now, dry_run=req.dry_run)
        except CapStoreUnavailable as exc:
            return self._capped_nudges(pending, self._caps_failed(exc))
        self.caps_breaker.succeeded()
        return self._capped_nudges(pending, outcomes)

    def _caps_failed(self, exc: CapStoreUnavailable) -> CapStoreUnavailable:
        """A cap store that did not answer is paused (the breaker's own refusal, or no store
        configured, is no new failure of the store)."""
        if self.caps is not None and not isinstance(exc, _CapsPaused):
            self.caps_breaker.failed()
        return exc

    def _cap_store(self) -> CapStore:
        if self.caps is None:
            raise CapStoreUnavailable("no frequency-cap store is configured")
        if not self.caps_breaker.allow():
            raise _CapsPaused("paused after failing to answer (it is probed again within "
                              f"{self.caps_breaker.cooldown_s:.1f} s)")
        return self.caps

    def _due_nudges(self, req: NudgeRequest, rpc: str,
                    read: Read | None = None) -> _PendingNudges | NudgeAnswer:
        """The nudges due and their cap reservations; the answer itself when none is due."""
        p, catalogue, arms = self._configured()
        arm = self._arm(arms, req.member_id, req.arm)
        if req.channel not in CHANNELS:
            raise InvalidArgument("channel", f"must be one of {list(CHANNELS)}, got "
                                             f"{req.channel!r}")
        items = catalogue.items
        degraded: list[str] = []
        ctx = self._context(req.member_id, MEMBER_SERVICE, req.points_balance, degraded, rpc,
                            read)
        served, scorer = self._scorer(ctx, items, req.surface, degraded, memo=True)

        def rank(member: ranking.Member, affordable_only: bool,
                 limit: int) -> list[ranking.Option]:
            return ranking.recommend(p, arm, member, items.core, scorer, limit=limit,
                                     affordable_only=affordable_only)

        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        due = core_nudges.due(p, ctx.member, ctx.points, now, rank)
        model = _version(served)
        if not due:
            return NudgeAnswer([], [], stamp=self._stamp(rpc, arm, model, degraded, ctx))
        return _PendingNudges(req, rpc, arm, ctx, model, degraded, now, due,
                              [core_nudges.reservation(p, n, req.channel) for n in due])

    def _capped_nudges(self, pending: _PendingNudges,
                       outcomes: list[core_nudges.CapOutcome] | CapStoreUnavailable
                       ) -> NudgeAnswer:
        """The answer from the cap store's outcomes, or its failure (all withheld)."""
        req, rpc, arm, ctx = pending.req, pending.rpc, pending.arm, pending.ctx
        degraded = pending.degraded
        if isinstance(outcomes, CapStoreUnavailable):
            log.warning("%s: frequency caps unavailable, %d nudge(s) withheld: %s", rpc,
                        len(pending.due), outcomes)
            degraded.append(CAP_STORE_UNAVAILABLE)
            return NudgeAnswer([], [], stamp=self._stamp(rpc, arm, pending.model, degraded,
                                                         ctx))
        delivered, withheld, dropped = core_nudges.apply(pending.due, outcomes)
        if not req.dry_run:
            for n in delivered:
                self.metrics.nudges.labels(n.kind, req.channel, arm.name).inc()
            for c in withheld:
                self.metrics.nudges_capped.labels(c.kind, c.cap).inc()
            for c in dropped:
                self.metrics.nudge_options_capped.labels(c.kind, c.cap).inc()
        return NudgeAnswer(delivered, withheld,
                           stamp=self._stamp(rpc, arm, pending.model, degraded, ctx))

    def churn_risk(self, member_ids: Sequence[int], rpc: str,
                   read: Read | None = None) -> ChurnAnswer:
        """Churn risk, band, segment, drivers and action per member, in request order
        (`read`: their churn_v1 features, when read ahead)."""
        _check_members(member_ids)
        served = self.churn.current  # one version for the whole request
        n = len(member_ids)
        if read is None:
            read = self.read(CHURN_SERVICE, member_ids, rpc)
        degraded = list(read.degraded)
        raw = read.raw
        cols, cold = read_columns(raw, n) if raw else ({}, np.ones(n, dtype=bool))
        if served is None:
            degraded.append(NO_MODEL)
            return ChurnAnswer([self._default(m, c) for m, c in zip(member_ids, cold, strict=True)],
                               stamp=self._stamp(rpc, None, "", degraded))
        scorer: ChurnScorer = served.scorer
        for name in scorer.features:  # a member the store does not know: every input missing
            cols.setdefault(name, np.full(n, np.nan))
        for name in ("days_since_last_order", "orders_365d", "spend_365d_minor", "tenure_days"):
            cols.setdefault(name, np.full(n, np.nan))
        start = time.perf_counter()
        scores = scorer.score(cols, contributions=True)
        self.metrics.predict.labels("churn").observe(time.perf_counter() - start)
        if scores.contributions is not None:  # the top drivers of every member at once
            contrib = scores.contributions
            top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :TOP_DRIVERS]
            values = np.take_along_axis(contrib, top, axis=1).tolist()
            names = np.asarray(scores.inputs, dtype=object)[top].tolist()
            drivers = [tuple(zip(n, v, strict=True)) for n, v in zip(names, values, strict=True)]
        else:
            drivers = [() for _ in range(n)]
        bands, segs = scores.band.tolist(), scores.segment.tolist()
        risks = [Risk(member_id=int(member), probability=prob, band=band, segment=seg,
                      drivers=drv, action=segments.recommended_action(seg, band),
                      cold_start=is_cold)
                 for member, prob, band, seg, drv, is_cold in zip(
                     member_ids, scores.probability.tolist(), bands, segs, drivers,
                     cold.tolist(), strict=True)]
        return ChurnAnswer(risks, round(scorer.horizon),
                           stamp=self._stamp(rpc, None, scorer.model_version, degraded))

    # -- the RPCs for the event loop: features read ahead (`read_async`), then the answer ------
    # `admit` runs between the two: the read may have waited, and the answer takes the loop.
    async def hints_async(self, req: HintRequest, rpc: str, admit: Admit = _admitted,
                          ) -> HintAnswer:
        read = await self.read_async(HINT_SERVICE, [req.member_id], rpc)
        admit()
        return self.hints(req, rpc, read)

    async def recommend_async(self, req: RecommendRequest, rpc: str, admit: Admit = _admitted,
                              ) -> RecommendAnswer:
        read = await self.read_async(MEMBER_SERVICE, [req.member_id], rpc)
        admit()
        return self.recommend(req, rpc, read)

    async def cart_split_async(self, req: CartRequest, rpc: str, admit: Admit = _admitted,
                               ) -> CartAnswer:
        read = await self.read_async(MEMBER_SERVICE, [req.member_id], rpc)
        admit()
        return self.cart_split(req, rpc, read)

    async def churn_risk_async(self, member_ids: Sequence[int], rpc: str,
                               admit: Admit = _admitted) -> ChurnAnswer:
        _check_members(member_ids)  # before reading: a refused batch costs no read
        read = await self.read_async(CHURN_SERVICE, member_ids, rpc)
        admit()
        return self.churn_risk(member_ids, rpc, read)

    def _default(self, member: int, cold: bool) -> Risk:
        """Without a model: an even chance, the middle band, and the ordinary action."""
        band, segment = "medium", "ordinary"
        return Risk(int(member), 0.5, band, segment, (),
                    segments.recommended_action(segment, band), bool(cold))

    def _verify(self, rpc: str, ctx: Context) -> tuple[str, ...]:
        """The member's points-fraud flags, counted: the answer asks for verification. A flag
        the code does not know (a newer job's) is counted as "other": label values come from
        this list, never from stored data."""
        for flag in ctx.flags:
            self.metrics.verification.labels(
                rpc, flag if flag in fraud.FLAG_NAMES else "other").inc()
        return ctx.flags

    def _stamp(self, rpc: str, arm: Arm | None, model_version: str, degraded: list[str],
               ctx: Context | None = None) -> Stamp:
        """How the answer was made: the arm, the model's version ("" for none), the degraded
        reasons and (from the member's profile `ctx`) the fraud flags; the reasons and flags
        counted."""
        for reason in degraded:
            self.metrics.degraded.labels(rpc, reason).inc()
        return Stamp(arm.name if arm is not None else "", model_version, tuple(degraded),
                     self._verify(rpc, ctx) if ctx is not None else ())
