"""Production models held in memory, swapped without a restart when the registry moves."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recsvc.adapters.registry import Registry
from recsvc.errors import ArtefactInvalid
from recsvc.metrics import ServiceMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded version and the scorer built from it."""

    version: str
    scorer: Any


class ModelHolder:
    """Holds the production version of one model; `refresh()` picks up a newly promoted one.

    A request reads `current` once and uses that object throughout, so a swap in the middle of
    a request never mixes versions. A broken artefact is refused and the previous version keeps
    serving; no model at all leaves `current` None and the service degrades.
    """

    def __init__(self, name: str, registry: Registry, build: Callable[[Any], Any],
                 metrics: ServiceMetrics,
                 known_features: Callable[[str], set[str] | None] | None = None) -> None:
        self.name = name
        self.registry = registry
        self.build = build
        self.metrics = metrics
        self.known_features = known_features
        self.current: Served | None = None
        self._lock = threading.Lock()  # one reload at a time

    def refresh(self) -> bool:
        """Load the production version if it changed; True when a new version is served."""
        with self._lock:
            try:
                version = self.registry.production(self.name)
            except ArtefactInvalid as exc:
                log.warning("%s: cannot read the production pointer: %s", self.name, exc)
                return False
            if version is None or (self.current and self.current.version == version):
                return False
            try:
                loaded = self.registry.load(self.name, version,
                                            known_features=self.known_features)
                served = Served(version, self.build(loaded))
            except ArtefactInvalid as exc:
                self.metrics.model_reloads.labels(self.name, "refused").inc()
                log.error("%s %s refused, still serving %s: %s", self.name, version,
                          self.current.version if self.current else "nothing", exc)
                return False
            previous = self.current
            self.current = served
            if previous is not None:
                # 0 rather than removing the series: removal is not supported when
                # prometheus-client runs in multiprocess mode (which importing Feast turns on)
                self.metrics.model_info.labels(self.name, previous.version).set(0)
            self.metrics.model_info.labels(self.name, version).set(1)
            self.metrics.model_created.labels(self.name).set(
                loaded.manifest.created_at.timestamp())
            self.metrics.model_reloads.labels(self.name, "loaded").inc()
            log.info("%s: serving %s (was %s)", self.name, version,
                     previous.version if previous else "nothing")
            return True
