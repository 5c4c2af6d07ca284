"""What the answers share: the programme and catalogue being served, the member's experiment arm
and profile, the index factors and propensity scores over the catalogue, the online read, and
the Stamp that says how an answer was made.

`Dataplane` (the RPCs' answers) builds on it, and `nudge_answers` (GetNudges within the caps)
works through it. No gRPC and no storage code here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from recsvc.adapters.model_holder import ModelHolder, Served
from recsvc.app.answers import NO_MODEL, Read, Stamp
from recsvc.app.catalogue import Catalogue, Items, Prepared
from recsvc.app.ports import FeatureSource, PropensityModel
from recsvc.app.profiles import Context, Profiles
from recsvc.app.reads import FeatureReads
from recsvc.config import Arm, Programme
from recsvc.core import fraud, ranking
from recsvc.core.experiments import ArmAssigner
from recsvc.core.index import IndexFactors
from recsvc.errors import InvalidArgument, NotFound
from recsvc.metrics import ServiceMetrics

# the feature services each answer reads a member's features from
HINT_SERVICE = "hint_v1"
MEMBER_SERVICE = "redemption_v1"
CHURN_SERVICE = "churn_v1"

Admit = Callable[[], None]
"""Raises when a call must not go on (the server is overloaded, the deadline passed)."""


def admitted() -> None:
    """Every call goes on (outside a server)."""


def check_id(name: str, value: int) -> None:
    """For callers that reach the dataplane without bounds.check (the batch jobs)."""
    if value < 1:
        raise InvalidArgument(name, f"must be >= 1 (ids start at 1), got {value}")


def version(served: Served | None) -> str:
    """The served model's version, "" when no model answers."""
    return served.version if served is not None else ""


class Answering:
    """The served programme, catalogue and models, and the steps every answer takes with
    them. Profiles and the catalogue load's prepared factors are kept between calls."""

    def __init__(self, features: FeatureSource, churn: ModelHolder,
                 metrics: ServiceMetrics, *, programme: Programme | None = None,
                 propensity: ModelHolder | None = None,
                 catalogue: Catalogue | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.reads = FeatureReads(features, metrics)
        self.churn = churn
        self.metrics = metrics
        self.programme = programme
        self.propensity = propensity
        self.catalogue = catalogue
        self.clock = clock
        self.arms = ArmAssigner(programme.experiments) if programme else None
        self._profiles = Profiles(programme)
        self._prepared_items: Prepared | None = None

    def configured(self) -> tuple[Programme, Catalogue, ArmAssigner]:
        """The programme, catalogue and arms the member-facing answers need."""
        if self.programme is None or self.catalogue is None or self.arms is None:
            raise NotFound("redemption answers are not configured in this service")
        return self.programme, self.catalogue, self.arms

    def member_arm(self, arms: ArmAssigner, member_id: int, forced: str) -> Arm:
        """The member's experiment arm, or the one the caller named (`forced`)."""
        check_id("member_id", member_id)
        arm = arms.named(forced) if forced else arms.arm(member_id)
        if arm is None:
            raise InvalidArgument("context.experiment_arm", f"no arm named {forced!r}")
        return arm

    def prepare(self) -> None:
        """Prepare the catalogue load being served (its index factors, the propensity model's
        item block) ahead of the answers: the server calls this off the event loop after
        every refresh, so no answer pays for a new load."""
        if self.catalogue is None or self.programme is None:
            return
        items = self.catalogue.items
        self.prepared(items)
        served = self.propensity.current if self.propensity else None
        warm = getattr(served.scorer, "prepare", None) if served is not None else None
        if warm is not None:
            warm(items, items.columns, len(items.core))

    def prepared(self, items: Items) -> Prepared:
        """`items` prepared for answers (once a catalogue load)."""
        assert self.programme is not None
        held = self._prepared_items
        if held is None or held.items is not items:
            held = self._prepared_items = Prepared.build(self.programme, items)
        return held

    def factors(self, ctx: Context, items: Items,
                positions: npt.NDArray[np.int64] | None = None, *,
                demand: int | None = None) -> IndexFactors:
        """The member's index factors for the items at `positions` (None: every item), from
        the load's item factors and the member's behaviour weight, both kept; `demand`: the
        points the member is taken to be ready to spend, when not the balance."""
        assert self.programme is not None
        member = ctx.member if demand is None else dataclasses.replace(ctx.member,
                                                                        balance=demand)
        return ranking.member_factors(self.programme, member, items.core, positions,
                                      item=self.prepared(items).factors, weight=ctx.behaviour)

    def context(self, member_id: int, service: str, balance: int | None,
                degraded: list[str], rpc: str, read: Read | None) -> Context:
        """The profile the core works with from the member's features (`read`, or read now;
        a store failure: a cold start, degraded); `balance` is the caller's live balance, if
        it sent one. Kept between calls (`Profiles`) while the member's features read the
        same and none of the member's points lapse."""
        if balance is not None and balance < 0:
            raise InvalidArgument("context.points_balance", f"must be >= 0, got {balance}")
        if read is None:
            read = self.reads.read(service, [member_id], rpc)
        degraded.extend(read.degraded)
        assert self.programme is not None
        return self._profiles.get((service, member_id, balance), read.raw, balance,
                                  dt.datetime.fromtimestamp(self.clock(), dt.UTC))

    def score_propensity(self, ctx: Context, items: Items, positions: npt.NDArray[np.int64],
                         surface: str, served: Served, factors: IndexFactors | None = None,
                         demand: int | None = None) -> npt.NDArray[np.float64]:
        """P(redeem within 7 days) of the member for the items at `positions`, from the
        member's index factors for them (computed here when the caller has none); `demand`:
        the balance the model sees, when not the member's (a cold start's default)."""
        assert self.programme is not None
        if factors is None:
            factors = self.factors(ctx, items, positions, demand=demand)
        model: PropensityModel = served.scorer
        balance = float(ctx.member.balance if demand is None else demand)
        start = time.perf_counter()
        got = model.score_items(items, items.columns, len(items.core), positions, ctx.features,
                                ctx.model_inputs, balance, surface, factors)
        self.metrics.predict.labels("propensity").observe(time.perf_counter() - start)
        return got

    def scorer(self, ctx: Context, items: Items, surface: str, degraded: list[str], *,
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
            return self.score_propensity(
                ctx, items, positions, surface, model,
                None if factors is None else ranking.take(factors, positions), demand)

        if not memo:
            return served, scorer
        known = np.full(len(items.core), np.nan)

        def remembered(positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            todo = positions[np.isnan(known[positions])]
            if len(todo):
                known[todo] = scorer(todo)
            return known[positions]

        return served, remembered

    def _verify(self, rpc: str, ctx: Context) -> tuple[str, ...]:
        """The member's points-fraud flags, counted: the answer asks for verification. A flag
        the code does not know (a newer job's) is counted as "other": label values come from
        this list, never from stored data."""
        for flag in ctx.flags:
            self.metrics.verification.labels(
                rpc, flag if flag in fraud.FLAG_NAMES else "other").inc()
        return ctx.flags

    def stamp(self, rpc: str, arm: Arm | None, model_version: str, degraded: list[str],
              ctx: Context | None = None) -> Stamp:
        """How the answer was made: the arm, the model's version ("" for none), the degraded
        reasons and (from the member's profile `ctx`) the fraud flags; the reasons and flags
        counted."""
        for reason in degraded:
            self.metrics.degraded.labels(rpc, reason).inc()
        return Stamp(arm.name if arm is not None else "", model_version, tuple(degraded),
                     self._verify(rpc, ctx) if ctx is not None else ())
