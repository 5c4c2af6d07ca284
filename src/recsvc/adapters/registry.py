"""Model registry: versioned LightGBM artefacts with manifests, a gated, atomic production pointer.

Layout under the root (one directory per model name)::

    <root>/<name>/v0001/model.txt        LightGBM text model, byte-for-byte as registered
                       /manifest.json    `Manifest`: features, window, metrics, checksums, ...
                       /report/          the evaluation report (Markdown, PNG, JSON)
    <root>/<name>/PRODUCTION             JSON: the production version and the versions before it
    <root>/<name>/events.jsonl           audit log: register / promote / refused / rollback
    <root>/<name>/.lock                  flock(2) target serialising writers of this model

Versions are ``v`` + a zero-padded counter (v0001, v0002, ...; v10000 follows v9999), allocated
under the lock: monotonic and unambiguous where clocks and timestamps are not. A version is
written to a hidden temporary directory and renamed into place, so it appears whole or not at
all. The production pointer is a single small file replaced with `os.replace`: readers see the
old pointer or the new one, never a partial one. The pointer carries its own history, so
`rollback` needs no second file that could disagree with it.

Loading verifies, in order: the manifest's schema; the model file's size and SHA-256 against
the manifest (before LightGBM sees a byte: LightGBM 4.x *aborts the process* on some truncated
model files and silently loads others that lost their tail); that LightGBM parses it; that the
booster's feature names equal the manifest's ordered list; and, given a `known_features`
callable, that the named feature service serves every feature not declared derived.

All filesystem access goes through `FileStore` (`file_store.py`), the seam for object storage
later; the manifest's schema and the promotion gate are `manifest.py`.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from recsvc.adapters.file_store import FileStore
from recsvc.adapters.manifest import (
    MODEL_FILE,
    NAME_RE,
    VERSION_RE,
    Champion,
    Gate,
    KnownFeatures,
    Manifest,
    booster_features,
    check_model,
    describe_invalid,
)
from recsvc.errors import ArtefactInvalid, PromotionRefused

MANIFEST_FILE = "manifest.json"
REPORT_DIR = "report"
POINTER_FILE = "PRODUCTION"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".lock"
POINTER_HISTORY_LIMIT = 100

_log = logging.getLogger(__name__)


class ModelNotFound(ArtefactInvalid):
    """No such model, version or production pointer: nothing to serve, as with a broken one."""


# -- registry --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProductionPointer:
    """Contents of the PRODUCTION file: the served version and the ones it replaced."""

    version: str
    previous: tuple[str, ...]
    updated_at: str
    action: str
    forced: bool = False

    def to_json(self) -> bytes:
        body = {
            "version": self.version,
            "previous": list(self.previous),
            "updated_at": self.updated_at,
            "action": self.action,
            "forced": self.forced,
        }
        return (json.dumps(body, indent=2) + "\n").encode()


@dataclass(frozen=True)
class LoadedModel:
    """A validated artefact ready to serve."""

    manifest: Manifest
    booster: Any  # lightgbm.Booster; typed loosely so this module imports without lightgbm
    directory: Path

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass(frozen=True)
class VersionInfo:
    """One row of `Registry.list`: read from the manifest only (no model parsing)."""

    name: str
    version: str
    in_production: bool
    created_at: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Promotion:
    """What `promote` did."""

    name: str
    version: str
    previous: str | None
    changed: bool
    forced: bool


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ModelNotFound(f"model name {name!r} is not valid (lower-case, digits, _ . -)")


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("lightgbm", "numpy", "scikit-learn", "scipy", "pandas", "feast", "recsvc"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


class Registry:
    """The model registry at `root`; see the module docstring for the layout and guarantees.

    `known_features` (feature service → its feature names, None if unknown) is used by `load`,
    `promote` and `rollback` unless they are given their own; without one, the feature-service
    check is skipped (offline tools), so the service must always pass it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        known_features: KnownFeatures | None = None,
        store: FileStore | None = None,
    ) -> None:
        self.store = store or FileStore(root)
        self.known_features = known_features

    @property
    def root(self) -> Path:
        return self.store.root

    # -- reading -----------------------------------------------------------------------------

    def names(self) -> builtins.list[str]:
        """Model names that have at least one version."""
        return [n for n in self.store.list_dir("") if NAME_RE.match(n) and self.versions(n)]

    def versions(self, name: str) -> builtins.list[str]:
        """Registered versions of `name`, oldest first."""
        _check_name(name)
        found = [v for v in self.store.list_dir(name) if VERSION_RE.match(v)]
        return sorted(found, key=lambda v: int(v[1:]))

    def pointer(self, name: str) -> ProductionPointer | None:
        """The production pointer of `name`, or None before the first promotion."""
        _check_name(name)
        try:
            raw = self.store.read_bytes(f"{name}/{POINTER_FILE}")
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw)
            return ProductionPointer(
                version=str(body["version"]),
                previous=tuple(str(v) for v in body.get("previous", [])),
                updated_at=str(body.get("updated_at", "")),
                action=str(body.get("action", "")),
                forced=bool(body.get("forced", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtefactInvalid(f"{name}: production pointer is unreadable: {exc}") from None

    def production(self, name: str) -> str | None:
        """The version of `name` in production, or None."""
        p = self.pointer(name)
        return p.version if p else None

    def manifest(self, name: str, version: str) -> Manifest:
        """The validated manifest of one version (schema only; the model is not parsed)."""
        _check_name(name)
        if not VERSION_RE.match(version):
            raise ModelNotFound(f"{name}: {version!r} is not a version name")
        key = f"{name}/{version}/{MANIFEST_FILE}"
        try:
            raw = self.store.read_bytes(key)
        except FileNotFoundError:
            raise ModelNotFound(f"{name} {version}: no such version") from None
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            raise ArtefactInvalid(
                f"{name} {version}: manifest invalid: {describe_invalid(exc)}") from None
        if manifest.model_name != name or manifest.version != version:
            raise ArtefactInvalid(
                f"{name} {version}: manifest names {manifest.model_name} {manifest.version}"
            )
        return manifest

    def report_dir(self, name: str, version: str) -> Path:
        return self.store.path(f"{name}/{version}/{REPORT_DIR}")

    def load(
        self,
        name: str,
        version: str | None = None,
        *,
        known_features: KnownFeatures | None = None,
    ) -> LoadedModel:
        """Load and fully validate a version (default: production); ArtefactInvalid if broken.

        Raises ModelNotFound (an ArtefactInvalid) when the version or the pointer is missing.
        """
        if version is None:
            version = self.production(name)
            if version is None:
                raise ModelNotFound(f"{name}: no version in production")
        manifest = self.manifest(name, version)
        model_key = f"{name}/{version}/{manifest.model_file}"
        try:
            data = self.store.read_bytes(model_key)
        except FileNotFoundError:
            raise ArtefactInvalid(f"{name} {version}: {manifest.model_file} is missing") from None
        booster = check_model(
            data, manifest, f"{name} {version}", known_features or self.known_features
        )
        return LoadedModel(manifest, booster, self.store.path(f"{name}/{version}"))

    # -- writing -----------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: Any,
        *,
        feature_service: str,
        training_window: tuple[Any, Any],
        data_fingerprint: str,
        metrics: Mapping[str, float],
        baseline_metrics: Mapping[str, Mapping[str, float]] | None = None,
        features: Sequence[str] | None = None,
        derived_features: Sequence[str] = (),
        champion: Champion | Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        report_dir: str | os.PathLike[str] | None = None,
        known_features: KnownFeatures | None = None,
    ) -> Manifest:
        """Store a new version of `name` and return its manifest; production is not changed.

        `model` is a `lightgbm.Booster` (saved at its best iteration when it has one) or the
        path of a LightGBM text model. `features` defaults to the booster's feature names and,
        when given, must equal them. `training_window` is (start, end): datetimes, dates or
        ISO strings. `report_dir` is copied into the version. The artefact is validated exactly
        as `load` would validate it before anything is written.
        """
        _check_name(name)
        if isinstance(model, str | os.PathLike):
            data = Path(model).read_bytes()
        elif hasattr(model, "model_to_string"):
            data = model.model_to_string().encode()
        else:
            raise TypeError("model must be a lightgbm.Booster or the path of a model file")
        report = Path(report_dir) if report_dir is not None else None
        if report is not None and not report.is_dir():
            raise FileNotFoundError(f"report_dir {report} is not a directory")
        if features is None:
            features = booster_features(data, name)
        fields: dict[str, Any] = {
            "model_name": name,
            "feature_service": feature_service,
            "features": list(features),
            "derived_features": list(derived_features),
            "training_window": {"start": training_window[0], "end": training_window[1]},
            "data_fingerprint": data_fingerprint,
            "metrics": dict(metrics),
            "baseline_metrics": {k: dict(v) for k, v in (baseline_metrics or {}).items()},
            "champion": champion,
            "library_versions": _library_versions(),
            "created_at": dt.datetime.now(dt.UTC),
            "model_sha256": hashlib.sha256(data).hexdigest(),
            "model_bytes": len(data),
            "extra": dict(extra or {}),
        }
        with self.store.lock(f"{name}/{LOCK_FILE}"):
            existing = self.versions(name)
            number = int(existing[-1][1:]) + 1 if existing else 1
            version = f"v{number:04d}"
            try:
                manifest = Manifest.model_validate({**fields, "version": version})
            except ValidationError as exc:
                raise ArtefactInvalid(
                    f"{name}: manifest invalid: {describe_invalid(exc)}") from None
            try:
                text = manifest.model_dump_json(indent=2)
            except ValueError as exc:  # e.g. something in `extra` that JSON cannot hold
                raise ArtefactInvalid(f"{name}: manifest is not serialisable: {exc}") from None
            check_model(data, manifest, f"{name} {version}", known_features or self.known_features)
            self.store.publish(
                f"{name}/{version}",
                {MODEL_FILE: data, MANIFEST_FILE: text.encode() + b"\n"},
                {REPORT_DIR: report} if report is not None else {},
            )
            self._event(name, "register", version)
        return manifest

    def promote(
        self,
        name: str,
        version: str,
        gate: Gate | None = None,
        *,
        force: bool = False,
        known_features: KnownFeatures | None = None,
    ) -> Promotion:
        """Make `version` the production version of `name` if it passes `gate`.

        The candidate is always fully validated (ArtefactInvalid if broken, even with
        `force`); `force` skips the gate only. Raises PromotionRefused with the gate's reasons
        otherwise. On any failure the pointer is left exactly as it was.
        """
        gate = gate or Gate()
        with self.store.lock(f"{name}/{LOCK_FILE}"):
            candidate = self.load(name, version, known_features=known_features).manifest
            current = self.pointer(name)
            if current is not None and current.version == version:
                return Promotion(name, version, version, changed=False, forced=force)
            if not force:
                production = None
                if current is not None:
                    try:
                        production = self.manifest(name, current.version)
                    except ArtefactInvalid:
                        # a broken production artefact is no standard to hold a candidate to
                        production = None
                reasons = gate.check(candidate, production)
                if reasons:
                    self._event(name, "refused", version, reason="; ".join(reasons))
                    raise PromotionRefused(f"{name} {version} not promoted: " + "; ".join(reasons))
            previous = (*current.previous, current.version) if current else ()
            self._swap(
                name,
                ProductionPointer(
                    version,
                    previous[-POINTER_HISTORY_LIMIT:],
                    _now(),
                    "promote",
                    force,
                ),
            )
            self._event(
                name,
                "promote",
                version,
                previous=current.version if current else None,
                forced=force,
            )
        return Promotion(
            name, version, current.version if current else None, changed=True, forced=force
        )

    def rollback(self, name: str, *, known_features: KnownFeatures | None = None) -> str:
        """Point production back at the version it replaced; returns that version.

        The restored version is validated first (ArtefactInvalid if it broke since);
        PromotionRefused when there is nothing to roll back to.
        """
        with self.store.lock(f"{name}/{LOCK_FILE}"):
            current = self.pointer(name)
            if current is None or not current.previous:
                raise PromotionRefused(f"{name}: no previous production version to roll back to")
            target = current.previous[-1]
            self.load(name, target, known_features=known_features)
            self._swap(name, ProductionPointer(target, current.previous[:-1], _now(), "rollback"))
            self._event(name, "rollback", target, previous=current.version)
        return target

    def _swap(self, name: str, pointer: ProductionPointer) -> None:
        self.store.write_atomic(f"{name}/{POINTER_FILE}", pointer.to_json())

    def _event(self, name: str, action: str, version: str, **details: Any) -> None:
        record = {"at": _now(), "action": action, "version": version, **details}
        try:
            self.store.append_line(f"{name}/{EVENTS_FILE}", json.dumps(record))
        except OSError as exc:
            # the audit log trails the pointer; failing here would report a completed
            # promotion as failed, so it is logged instead
            _log.warning("registry event not recorded (%s): %s", exc, record)

    # last, because inside the class body its name shadows the builtin `list`
    def list(self, name: str) -> builtins.list[VersionInfo]:
        """Every version of `name` with its metrics and whether it is in production."""
        try:
            live = self.production(name)
        except ArtefactInvalid:
            live = None
        rows = []
        for version in self.versions(name):
            try:
                m = self.manifest(name, version)
            except ArtefactInvalid as exc:
                rows.append(VersionInfo(name, version, version == live, error=str(exc)))
                continue
            rows.append(
                VersionInfo(
                    name,
                    version,
                    version == live,
                    created_at=m.created_at.isoformat(timespec="seconds"),
                    metrics=dict(m.metrics),
                    baseline_metrics={k: dict(v) for k, v in m.baseline_metrics.items()},
                )
            )
        return rows
