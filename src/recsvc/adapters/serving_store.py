"""The serving process's offline store: none, so it never loads an offline engine.

Feast validates a repo's offline store when the store opens, importing its engine (DuckDB and
ibis for recsvc's default). The server answers from the online store alone, so it opens the
store with this one instead: every offline read is refused (Feast's NotImplementedError).
"""

from __future__ import annotations

from typing import Literal

from feast.infra.offline_stores.offline_store import OfflineStore
from feast.repo_config import FeastConfigBaseModel


class ServingOfflineStoreConfig(FeastConfigBaseModel):
    type: Literal["recsvc.adapters.serving_store.ServingOfflineStore"] = (
        "recsvc.adapters.serving_store.ServingOfflineStore")


class ServingOfflineStore(OfflineStore):
    """No offline reads: historical features are the batch jobs' (their store has DuckDB)."""
