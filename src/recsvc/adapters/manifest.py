"""A registered model's manifest (what it was trained on, its features, metrics, baselines and
checksums: a strict schema), the gate that decides from two manifests whether a candidate
may replace production, and a model file checked against its manifest."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsvc.errors import ArtefactInvalid

MODEL_FILE = "model.txt"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^v(\d{4,})$")

# -- manifest --------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


class TrainingWindow(_Frozen):
    """The period the training data covers; naive times are taken as UTC."""

    start: dt.datetime
    end: dt.datetime

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start > self.end:
            raise ValueError("start is after end")
        return self


class Champion(_Frozen):
    """The production model re-scored on this candidate's validation data, when the training
    job did so: the gate then compares like with like instead of metrics from two windows."""

    version: str
    metrics: dict[str, float]


class Manifest(_Frozen):
    """Everything needed to serve, audit and gate one model version (manifest.json)."""

    schema_version: Literal[1] = 1
    model_name: str = Field(pattern=NAME_RE.pattern)
    version: str = Field(pattern=VERSION_RE.pattern)
    feature_service: str = Field(min_length=1)
    features: list[str] = Field(min_length=1)
    """The booster's input columns, in order."""
    derived_features: list[str] = []
    """Features computed at request time (e.g. the index factors), not read from the store."""
    training_window: TrainingWindow
    data_fingerprint: str = Field(min_length=1)
    metrics: dict[str, float]
    """The model's metrics on the validation split: what the promotion gate judges."""
    baseline_metrics: dict[str, dict[str, float]] = {}
    """Baseline name → its metrics on the same split."""
    champion: Champion | None = None
    library_versions: dict[str, str] = {}
    created_at: dt.datetime
    model_file: str = MODEL_FILE
    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    model_bytes: int = Field(gt=0)
    extra: dict[str, Any] = {}
    """Free-form, JSON-serialisable: RFM thresholds, calibration, band cuts, ..."""

    @model_validator(mode="after")
    def _features_consistent(self) -> Self:
        dupes = sorted({f for f in self.features if self.features.count(f) > 1})
        if dupes:
            raise ValueError(f"features: duplicated {dupes}")
        stray = sorted(set(self.derived_features) - set(self.features))
        if stray:
            raise ValueError(f"derived_features: not among the features {stray}")
        return self


def describe_invalid(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


# -- gate ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gate:
    """Promotion rules on one validation metric.

    A candidate must beat the best baseline by more than `min_margin`, and must not fall more
    than `tolerance` below the production version (its `champion` re-score when the manifest
    has one for that version, else the production manifest's own metric). A version that
    serves one of its baselines (`extra["served"]`, a classic churn model that beat the trees)
    is that baseline: it must beat the others.
    """

    metric: str = "roc_auc"
    higher_is_better: bool = True
    tolerance: float = 0.005
    min_margin: float = 0.0
    require_baseline: bool = True

    def check(self, candidate: Manifest, production: Manifest | None) -> list[str]:
        """Why the candidate may not replace production; empty when it may."""
        sign = 1.0 if self.higher_is_better else -1.0
        m = self.metric
        if m not in candidate.metrics:
            return [f"candidate {candidate.version} has no {m!r} metric"]
        mine = candidate.metrics[m]
        reasons = []
        served = candidate.extra.get("served")
        baselines = {n: v[m] for n, v in candidate.baseline_metrics.items()
                     if m in v and n != served}
        if baselines:
            best = max(baselines, key=lambda n: sign * baselines[n])
            if not sign * (mine - baselines[best]) > self.min_margin:
                reasons.append(
                    f"{m} {mine:.4f} does not beat the best baseline {best!r} "
                    f"({baselines[best]:.4f})"
                )
        elif self.require_baseline:
            reasons.append(f"no baseline {m!r} to beat in the manifest")
        if production is not None and production.version != candidate.version:
            champ = candidate.champion
            if champ is not None and champ.version == production.version and m in champ.metrics:
                ref, source = champ.metrics[m], "re-scored on the candidate's validation data"
            elif m in production.metrics:
                ref, source = production.metrics[m], "as recorded in its manifest"
            else:
                return [*reasons, f"production {production.version} has no {m!r} to compare"]
            regression = sign * (ref - mine)
            if regression > self.tolerance:
                reasons.append(
                    f"{m} {mine:.4f} regresses {regression:.4f} against production "
                    f"{production.version} ({ref:.4f}, {source}); tolerance {self.tolerance}"
                )
        return reasons


# -- a model file against its manifest ---------------------------------------------------
KnownFeatures = Callable[[str], Collection[str] | None]
"""Feature service name → the feature names it serves, or None when there is no such service."""


def _booster_from_bytes(data: bytes, where: str) -> Any:
    import lightgbm

    try:
        return lightgbm.Booster(model_str=data.decode("utf-8"))
    except (lightgbm.basic.LightGBMError, UnicodeDecodeError, ValueError) as exc:
        raise ArtefactInvalid(f"{where}: model file does not parse: {exc}") from None


def booster_features(data: bytes, name: str) -> list[str]:
    """The input names of the model in `data` (a LightGBM model file's bytes)."""
    return [str(f) for f in _booster_from_bytes(data, name).feature_name()]


def check_model(
    data: bytes, manifest: Manifest, where: str, known_features: KnownFeatures | None
) -> Any:
    """The booster in `data`, once it is the file the manifest describes (size, checksum, the
    inputs in order) and, with `known_features`, its feature service serves every input that
    is not derived; ArtefactInvalid saying what differs otherwise."""
    if len(data) != manifest.model_bytes or hashlib.sha256(data).hexdigest() != (
        manifest.model_sha256
    ):
        raise ArtefactInvalid(
            f"{where}: {manifest.model_file} is truncated or corrupt "
            f"({len(data)} bytes, manifest says {manifest.model_bytes}; checksum mismatch)"
        )
    booster = _booster_from_bytes(data, where)
    names = [str(f) for f in booster.feature_name()]
    if names != manifest.features:
        missing = [f for f in manifest.features if f not in names]
        unexpected = [f for f in names if f not in manifest.features]
        detail = (
            f"missing from the model {missing}, not in the manifest {unexpected}"
            if missing or unexpected
            else "same features in a different order"
        )
        raise ArtefactInvalid(f"{where}: model features differ from the manifest: {detail}")
    if known_features is not None:
        served = known_features(manifest.feature_service)
        if served is None:
            raise ArtefactInvalid(f"{where}: feature service {manifest.feature_service!r} unknown")
        derived = set(manifest.derived_features)
        absent = [f for f in manifest.features if f not in derived and f not in set(served)]
        if absent:
            raise ArtefactInvalid(
                f"{where}: feature service {manifest.feature_service!r} lacks {absent}"
            )
    return booster
