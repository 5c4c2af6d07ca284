"""What every batch job and the server open first: the settings, the programme, the feature store
and the model registry, opened once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recsvc.data.views import feature_name
from recsvc.errors import RecsvcError
from recsvc.settings import Settings


@dataclass
class Context:
    """What every model job needs, opened once."""

    settings: Settings
    programme: Any
    store: Any
    registry: Any

    def history(self, service: str, frame: Any) -> Any:
        from recsvc.adapters import feast as fstore

        return fstore.historical_features(self.store, service, frame)

    def known_features(self, service: str) -> set[str] | None:
        from recsvc.adapters import feast as fstore

        try:
            return {feature_name(n) for n in fstore.feature_names(self.store, service)}
        except RecsvcError:
            return None


def open_context(settings: Settings, *, offline: bool = True) -> Context:
    """Settings, programme, feature store and registry; without `offline`, as the server
    opens them (no offline engine: `history` is refused)."""
    from recsvc.adapters import feast as fstore
    from recsvc.adapters.registry import Registry
    from recsvc.config import load_programme

    feast_store = fstore.open_store(settings, offline=offline)
    registry = Registry(settings.registry_dir)
    return Context(settings, load_programme(settings.programme), feast_store, registry)
