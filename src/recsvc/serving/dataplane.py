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

from recsvc.core import segments
from recsvc.errors import FeatureStoreUnavailable, InvalidArgument
from recsvc.metrics import ServiceMetrics
from recsvc.models.scoring import ChurnScorer
from recsvc.serving.models import ModelHolder

log = logging.getLogger(__name__)

MAX_CHURN_BATCH = 1000
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
        from recsvc.features import store as fstore

        return fstore.online_features(self.store, service, [{entity_key: int(i)} for i in ids])


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
    """Feature columns by feature name, numbers as float arrays (NaN for missing), and which
    rows have no features at all (unknown members: cold start)."""
    cols: dict[str, Any] = {}
    present = np.zeros(n, dtype=bool)
    for name, values in raw.items():
        if "__" not in name:
            continue
        short = name.split("__", 1)[1]
        arr = np.asarray(values, dtype=object)
        present |= arr != None  # noqa: E711 - element-wise comparison with None
        if all(v is None or isinstance(v, int | float) for v in values):
            cols[short] = np.array([np.nan if v is None else float(v) for v in values])
        else:
            cols[short] = arr
    return cols, ~present


class Dataplane:
    def __init__(self, features: FeatureSource, churn: ModelHolder,
                 metrics: ServiceMetrics) -> None:
        self.features = features
        self.churn = churn
        self.metrics = metrics

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
