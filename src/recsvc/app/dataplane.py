"""The service's one core: validates, reads features, scores, degrades; no gRPC in here.

The servicer converts a request, calls one method here and converts the answer back. Every
dependency failure becomes a degraded answer (with its reason) rather than a failed call. What
the answers share (the member's arm and profile, index factors, propensity, the read, the
Stamp) is `answering.Answering`, which `Dataplane` extends; GetNudges with its cap store is
`nudge_answers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from recsvc.adapters.model_holder import ModelHolder, Served
from recsvc.app.answering import (
    CHURN_SERVICE,
    HINT_SERVICE,
    MEMBER_SERVICE,
    Admit,
    Answering,
    admitted,
    check_id,
    version,
)
from recsvc.app.answers import (
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
)
from recsvc.app.catalogue import Catalogue, Items, read_columns
from recsvc.app.nudge_answers import NudgeAnswers
from recsvc.app.ports import CapStore, FeatureSource, PropensityModel
from recsvc.app.profiles import Context
from recsvc.config import Programme
from recsvc.core import cart, ranking, redemption, segments
from recsvc.core import catalogue as core_catalogue
from recsvc.core import index as idx
from recsvc.core.experiments import hint_threshold
from recsvc.core.redemption import Reason
from recsvc.defaults import DEFAULT_RECOMMENDATIONS, MAX_RECOMMENDATIONS
from recsvc.errors import InvalidArgument, NotFound
from recsvc.metrics import ServiceMetrics
from recsvc.ml.scoring import ChurnScorer

MAX_CHURN_BATCH = 1000
MAX_HINT_BATCH = 100
WANTED_ITEMS = 5  # the cart's advice compares the points' value here with these items'
TOP_DRIVERS = 3


def _check_members(member_ids: Sequence[int]) -> None:
    if not member_ids:
        raise InvalidArgument("member_ids", "at least one member id is required")
    if len(member_ids) > MAX_CHURN_BATCH:
        raise InvalidArgument("member_ids", f"at most {MAX_CHURN_BATCH} per call, got "
                                            f"{len(member_ids)}")
    for i, member in enumerate(member_ids):
        check_id(f"member_ids[{i}]", member)


class Dataplane(Answering):
    def __init__(self, features: FeatureSource, churn: ModelHolder,
                 metrics: ServiceMetrics, *, programme: Programme | None = None,
                 propensity: ModelHolder | None = None,
                 catalogue: Catalogue | None = None,
                 caps: CapStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(features, churn, metrics, programme=programme, propensity=propensity,
                         catalogue=catalogue, clock=clock)
        self.nudge_answers = NudgeAnswers(self, caps)

    # -- the RPCs ------------------------------------------------------------------------------
    def hints(self, req: HintRequest, rpc: str, read: Read | None = None) -> HintAnswer:
        """Product-page hints for up to 100 items, in request order (`read`: the member's
        hint_v1 features, when read ahead)."""
        p, catalogue, arms = self.configured()
        arm = self.member_arm(arms, req.member_id, req.arm)
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
        ctx = self.context(req.member_id, HINT_SERVICE, req.points_balance, degraded, rpc, read)
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
        return HintAnswer(out, stamp=self.stamp(rpc, arm, version(served), degraded, ctx))

    def _one_hint(self, ctx: Context, items: Items, k: int, surface: str,
                  served: Served | None, threshold: float) -> list[ItemHint]:
        """The hint for the item at position `k`, in plain numbers: the product page's call."""
        assert self.programme is not None
        p, prep, member = self.programme, self.prepared(items), ctx.member
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
        factors = self.factors(ctx, items, positions)
        probabilities = None
        if served is not None:
            probabilities = self.score_propensity(ctx, items, positions, surface, served, factors)
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
                return self.score_propensity(ctx, items, positions, surface, served)
        return core_catalogue.alternates(self.programme, items.similar, targets,
                                         propensity=scorer)

    def recommend(self, req: RecommendRequest, rpc: str,
                  read: Read | None = None) -> RecommendAnswer:
        """The best ways to spend the member's points: ranked, explained options."""
        p, catalogue, arms = self.configured()
        arm = self.member_arm(arms, req.member_id, req.arm)
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
        ctx = self.context(req.member_id, MEMBER_SERVICE, req.points_balance, degraded, rpc,
                            read)
        # a member the store does not know, with no live balance from the caller, is ranked as
        # the programme's default member (ready to spend cold_start_points_demand points: the
        # index's demand match and the model's balance); the answer keeps the real balance
        demand = (p.index.cold_start_points_demand if ctx.cold and req.points_balance is None
                  else None)
        factors = self.factors(ctx, items, demand=demand)
        served, scorer = self.scorer(ctx, items, req.surface, degraded, factors=factors,
                                      demand=demand)
        options = ranking.recommend(
            p, arm, ctx.member, items.core, scorer, limit=limit, categories=req.categories,
            max_points_price=req.max_points_price, affordable_only=req.affordable_only,
            factors=factors, cold_start=ctx.cold)
        dated = [(at, pts) for at, pts in ctx.points.buckets if at != cart.NO_EXPIRY]
        return RecommendAnswer(
            options, ranking.unlocks_in_reach(p, ctx.member), ctx.member.balance,
            ctx.member.expiring_points, dated[0][0] if dated else None,
            stamp=self.stamp(rpc, arm, version(served), degraded, ctx))

    def cart_split(self, req: CartRequest, rpc: str, read: Read | None = None) -> CartAnswer:
        """The order's points/cash split under every rule, points taken earliest-lapsing first,
        and advice when the member's wanted items would make more of the points."""
        p, catalogue, arms = self.configured()
        arm = self.member_arm(arms, req.member_id, req.arm)
        if not req.lines:
            raise InvalidArgument("lines", "at least one line is required")
        degraded: list[str] = []
        ctx = self.context(req.member_id, MEMBER_SERVICE, req.points_balance, degraded, rpc,
                            read)
        # "wanted": the member's best-ranked items the index says points are better for
        wanted = ranking.recommend(p, arm, ctx.member, catalogue.items.core,
                                   limit=WANTED_ITEMS, affordable_only=True)
        worth = [o.factors.value_coefficient for o in wanted
                 if Reason.INDEX_ABOVE_THRESHOLD in o.reasons and not o.factors.vacuum]
        split = cart.optimize_cart(p, req.lines, ctx.points,
                                   keep_value_per_point=max(worth) if worth else None)
        self.metrics.cart_points.labels(arm.name, split.binding_rule).inc(split.points_used)
        return CartAnswer(split, stamp=self.stamp(rpc, arm, "", degraded, ctx))

    def nudges(self, req: NudgeRequest, rpc: str) -> NudgeAnswer:
        """The reminders due to the member now on one channel, within the frequency caps
        (`NudgeAnswers.answer`: blocks on the cap store, the batch job's way)."""
        return self.nudge_answers.answer(req, rpc)

    def churn_risk(self, member_ids: Sequence[int], rpc: str,
                   read: Read | None = None) -> ChurnAnswer:
        """Churn risk, band, segment, drivers and action per member, in request order
        (`read`: their churn_v1 features, when read ahead)."""
        _check_members(member_ids)
        served = self.churn.current  # one version for the whole request
        n = len(member_ids)
        if read is None:
            read = self.reads.read(CHURN_SERVICE, member_ids, rpc)
        degraded = list(read.degraded)
        raw = read.raw
        cols, cold = read_columns(raw, n) if raw else ({}, np.ones(n, dtype=bool))
        if served is None:
            degraded.append(NO_MODEL)
            return ChurnAnswer([self._default(m, c) for m, c in zip(member_ids, cold, strict=True)],
                               stamp=self.stamp(rpc, None, "", degraded))
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
        risks = [Risk(int(member), prob, band, seg, drv, segments.recommended_action(seg, band),
                      is_cold)
                 for member, prob, band, seg, drv, is_cold in zip(
                     member_ids, scores.probability.tolist(), bands, segs, drivers,
                     cold.tolist(), strict=True)]
        return ChurnAnswer(risks, round(scorer.horizon),
                           stamp=self.stamp(rpc, None, scorer.model_version, degraded))

    # -- the RPCs for the event loop: features read ahead (`read_async`), then the answer ------
    # `admit` runs between the two: the read may have waited, and the answer takes the loop.
    async def hints_async(self, req: HintRequest, rpc: str, admit: Admit = admitted,
                          ) -> HintAnswer:
        read = await self.reads.read_async(HINT_SERVICE, [req.member_id], rpc)
        admit()
        return self.hints(req, rpc, read)

    async def recommend_async(self, req: RecommendRequest, rpc: str, admit: Admit = admitted,
                              ) -> RecommendAnswer:
        read = await self.reads.read_async(MEMBER_SERVICE, [req.member_id], rpc)
        admit()
        return self.recommend(req, rpc, read)

    async def cart_split_async(self, req: CartRequest, rpc: str, admit: Admit = admitted,
                               ) -> CartAnswer:
        read = await self.reads.read_async(MEMBER_SERVICE, [req.member_id], rpc)
        admit()
        return self.cart_split(req, rpc, read)

    async def nudges_async(self, req: NudgeRequest, rpc: str,
                           admit: Admit = admitted) -> NudgeAnswer:
        return await self.nudge_answers.answer_async(req, rpc, admit)

    async def churn_risk_async(self, member_ids: Sequence[int], rpc: str,
                               admit: Admit = admitted) -> ChurnAnswer:
        _check_members(member_ids)  # before reading: a refused batch costs no read
        read = await self.reads.read_async(CHURN_SERVICE, member_ids, rpc)
        admit()
        return self.churn_risk(member_ids, rpc, read)

    def _default(self, member: int, cold: bool) -> Risk:
        """Without a model: an even chance, the middle band, and the ordinary action."""
        band, segment = "medium", "ordinary"
        return Risk(int(member), 0.5, band, segment, (),
                    segments.recommended_action(segment, band), bool(cold))
