"""The service's one core: validates, reads features, scores, degrades; no gRPC in here.

The servicer converts a request, calls one method here and converts the answer back. Every
dependency failure becomes a degraded answer (with its reason) rather than a failed call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recsvc.config import Programme
from recsvc.core import redemption, segments
from recsvc.core.experiments import ArmAssigner, hint_threshold
from recsvc.errors import FeatureStoreUnavailable, InvalidArgument, NotFound
from recsvc.metrics import ServiceMetrics
from recsvc.models import inputs
from recsvc.models.scoring import ChurnScorer
from recsvc.serving.models import ModelHolder

log = logging.getLogger(__name__)

MAX_CHURN_BATCH = 1000
MAX_HINT_BATCH = 100
TOP_DRIVERS = 3
FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
NO_MODEL = "no_model"


class FeatureSource(Protocol):
    """Online features of a feature service for entity ids: {"<view>__<feature>": values}."""

    def read_service(
        self, service: str, entity_key: str, ids: Sequence[int]
    ) -> dict[str, list[Any]]: ...


class FeastSource:
    """Reads through the Feast SDK (`store.online_features`): correct, and the slow reference."""

    def __init__(self, feast_store: Any) -> None:
        self.store = feast_store

    def read_service(
        self, service: str, entity_key: str, ids: Sequence[int]
    ) -> dict[str, list[Any]]:
        """The service's views keyed by `entity_key` only (a member's part, or the items')."""
        from recsvc.features import store as fstore

        with fstore.feast_errors(f"read {service!r} online"):
            fs = self.store.get_feature_service(service, allow_cache=True)
            refs = [f"{p.name_to_use()}:{f.name}" for p in fs.feature_view_projections
                    if [c.name for c in self.store.get_feature_view(p.name).entity_columns]
                    == [entity_key] for f in p.features]
            got = self.store.get_online_features(
                features=refs, entity_rows=[{entity_key: int(i)} for i in ids],
                full_feature_names=True).to_dict()
        return {k: v for k, v in got.items() if k != entity_key}


@dataclass(frozen=True)
class Risk:
    member_id: int
    probability: float
    band: str
    segment: str
    drivers: tuple[tuple[str, float], ...]
    action: segments.Action
    cold_start: bool


@dataclass(frozen=True)
class ChurnAnswer:
    risks: list[Risk]
    model_version: str
    degraded: tuple[str, ...] = field(default_factory=tuple)


def _columns(raw: dict[str, list[Any]], n: int) -> tuple[dict[str, Any], np.ndarray]:
    """Feature columns by feature name, and which rows have no features at all (unknown
    members: cold start)."""
    present = np.zeros(n, dtype=bool)
    for name, values in raw.items():
        if "__" in name:
            present |= np.asarray(values, dtype=object) != None  # noqa: E711 - element-wise
    return inputs.feature_columns(raw), ~present


class Catalogue:
    """Every item's features in memory, so hints never wait on the store for item data and
    keep answering while it is down; `refresh()` reloads them (in the background)."""

    def __init__(self, features: FeatureSource, item_ids: Any) -> None:
        self.features = features
        self.item_ids = item_ids  # () -> list of ids
        self.rows: dict[int, dict[str, Any]] = {}

    def refresh(self) -> int:
        ids = [int(i) for i in self.item_ids()]
        raw = self.features.read_service("propensity_v1", "item_id", ids)
        rows: dict[int, dict[str, Any]] = {i: {} for i in ids}
        for name, values in raw.items():
            short = name.split("__", 1)[1] if "__" in name else name
            for i, value in zip(ids, values, strict=True):
                rows[i][short] = value
        self.rows = {i: r for i, r in rows.items() if any(v is not None for v in r.values())}
        return len(self.rows)


@dataclass(frozen=True)
class HintRequest:
    member_id: int
    item_ids: Sequence[int]
    surface: str = "product_page"
    points_balance: int | None = None
    arm: str = ""


@dataclass(frozen=True)
class ItemHint:
    item_id: int
    points_price: int
    hint: redemption.Hint
    propensity: float | None


@dataclass(frozen=True)
class HintAnswer:
    hints: list[ItemHint]
    arm: str
    model_version: str
    degraded: tuple[str, ...] = field(default_factory=tuple)


class Dataplane:
    def __init__(self, features: FeatureSource, churn: ModelHolder,
                 metrics: ServiceMetrics, *, programme: Programme | None = None,
                 propensity: ModelHolder | None = None,
                 catalogue: Catalogue | None = None) -> None:
        self.features = features
        self.churn = churn
        self.metrics = metrics
        self.programme = programme
        self.propensity = propensity
        self.catalogue = catalogue
        self.arms = ArmAssigner(programme.experiments) if programme else None

    def hints(self, req: HintRequest, rpc: str) -> HintAnswer:
        """Product-page hints for up to 100 items, in request order."""
        if self.programme is None or self.catalogue is None or self.arms is None:
            raise NotFound("hints are not configured in this service")
        p = self.programme
        if req.member_id < 0:
            raise InvalidArgument("member_id", f"must be >= 0, got {req.member_id}")
        if not req.item_ids:
            raise InvalidArgument("item_ids", "at least one item id is required")
        if len(req.item_ids) > MAX_HINT_BATCH:
            raise InvalidArgument("item_ids", f"at most {MAX_HINT_BATCH} per call, got "
                                              f"{len(req.item_ids)}")
        if req.points_balance is not None and req.points_balance < 0:
            raise InvalidArgument("context.points_balance", "must be >= 0")
        arm = self.arms.named(req.arm) if req.arm else self.arms.arm(req.member_id)
        if arm is None:
            raise InvalidArgument("context.experiment_arm", f"no arm named {req.arm!r}")
        items = []
        for i, item in enumerate(req.item_ids):
            row = self.catalogue.rows.get(int(item))
            if row is None:
                raise NotFound(f"item_ids[{i}]: no item {item}")
            items.append(row)
        degraded: list[str] = []
        start = time.perf_counter()
        try:
            raw = self.features.read_service("propensity_v1", "member_id", [req.member_id])
        except FeatureStoreUnavailable as exc:
            log.warning("%s: online store unavailable, member from defaults: %s", rpc, exc)
            raw, degraded = {}, [FEATURE_STORE_UNAVAILABLE]
        self.metrics.feature_read.labels("propensity_v1").observe(time.perf_counter() - start)
        member = {(k.split("__", 1)[1] if "__" in k else k): v[0] for k, v in raw.items()}
        cold = all(v is None for v in member.values())
        balance = req.points_balance
        if balance is None:
            balance = int(member.get("points_balance") or 0)

        def num(row: dict[str, Any], name: str, default: float) -> float:
            value = row.get(name)
            return default if value is None else float(value)

        probabilities: list[float | None] = [None] * len(items)
        served = self.propensity.current if self.propensity else None
        if served is None:
            degraded.append(NO_MODEL)
        else:
            cols: dict[str, Any] = {}
            for name in {*member, *items[0]}:
                values = [row.get(name, member.get(name)) for row in items]
                cols[name] = inputs.column(values)
            cols["points_balance"] = np.full(len(items), float(balance))
            cols["surface"] = np.full(len(items), req.surface, dtype=object)
            start = time.perf_counter()
            probabilities = [float(x) for x in served.scorer.score(cols)]
            self.metrics.predict.labels("propensity").observe(time.perf_counter() - start)
        threshold = hint_threshold(arm, p.index)
        tier = member.get("tier")
        tier_mult = p.earning.tier_multipliers.get(tier, 1.0) if isinstance(tier, str) else 1.0
        out = []
        for item, row, prob in zip(req.item_ids, items, probabilities, strict=True):
            h = redemption.hint(
                p, market_price_minor=int(num(row, "market_price_minor", 0)),
                perceived_discount=num(row, "perceived_discount", 1.0),
                points_price=int(num(row, "points_price", 0)),
                item_discount=num(row, "discount_coefficient", 1.0), balance=balance,
                orders_90d=num(member, "orders_90d", 0.0),
                days_since_last_order=num(member, "days_since_last_order", float("inf")),
                young=member.get("age_band") in p.index.young_age_bands,
                high_spender=num(member, "avg_order_value_365d_minor", 0.0)
                >= p.index.high_spender_min_aov_units * p.currency.minor_per_unit,
                threshold=threshold, tier_multiplier=tier_mult,
                expiring_points=int(num(member, "points_expiring_30d", 0)), propensity=prob,
                cold_start=cold)
            self.metrics.hints.labels(arm.name, str(h.points_better).lower()).inc()
            out.append(ItemHint(int(item), int(num(row, "points_price", 0)), h, prob))
        return HintAnswer(out, arm.name, served.version if served else "",
                          self._count(rpc, degraded))

    def churn_risk(self, member_ids: Sequence[int], rpc: str) -> ChurnAnswer:
        if not member_ids:
            raise InvalidArgument("member_ids", "at least one member id is required")
        if len(member_ids) > MAX_CHURN_BATCH:
            raise InvalidArgument("member_ids", f"at most {MAX_CHURN_BATCH} per call, got "
                                                f"{len(member_ids)}")
        for i, member in enumerate(member_ids):
            if member < 0:
                raise InvalidArgument(f"member_ids[{i}]", f"must be >= 0, got {member}")
        served = self.churn.current  # one version for the whole request
        degraded: list[str] = []
        n = len(member_ids)
        start = time.perf_counter()
        try:
            raw = self.features.read_service("churn_v1", "member_id", member_ids)
        except FeatureStoreUnavailable as exc:
            log.warning("%s: online store unavailable, answering from defaults: %s", rpc, exc)
            raw = {}
            degraded.append(FEATURE_STORE_UNAVAILABLE)
        self.metrics.feature_read.labels("churn_v1").observe(time.perf_counter() - start)
        cols, cold = _columns(raw, n) if raw else ({}, np.ones(n, dtype=bool))
        if served is None:
            degraded.append(NO_MODEL)
            return ChurnAnswer([self._default(m, c) for m, c in zip(member_ids, cold, strict=True)],
                               "", self._count(rpc, degraded))
        scorer: ChurnScorer = served.scorer
        for name in scorer.features:  # a member the store does not know: every input missing
            cols.setdefault(name, np.full(n, np.nan))
        for name in ("days_since_last_order", "orders_365d", "spend_365d_minor", "tenure_days"):
            cols.setdefault(name, np.full(n, np.nan))
        start = time.perf_counter()
        scores = scorer.score(cols, contributions=True)
        self.metrics.predict.labels("churn").observe(time.perf_counter() - start)
        risks = []
        for i, member in enumerate(member_ids):
            contrib = scores.contributions[i] if scores.contributions is not None else []
            top = np.argsort(-np.abs(contrib))[:TOP_DRIVERS]
            risks.append(Risk(
                member_id=int(member), probability=float(scores.probability[i]),
                band=str(scores.band[i]), segment=str(scores.segment[i]),
                drivers=tuple((scorer.features[j], float(contrib[j])) for j in top),
                action=segments.recommended_action(str(scores.segment[i]), str(scores.band[i])),
                cold_start=bool(cold[i])))
        return ChurnAnswer(risks, served.version, self._count(rpc, degraded))

    def _default(self, member: int, cold: bool) -> Risk:
        """Without a model: an even chance, the middle band, and the ordinary action."""
        band, segment = "medium", "ordinary"
        return Risk(int(member), 0.5, band, segment, (),
                    segments.recommended_action(segment, band), bool(cold))

    def _count(self, rpc: str, reasons: list[str]) -> tuple[str, ...]:
        for reason in reasons:
            self.metrics.degraded.labels(rpc, reason).inc()
        return tuple(reasons)
