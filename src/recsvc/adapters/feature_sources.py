"""Feature sources over the Feast SDK: the online store through `get_online_features` (the
correct, slow reference the fast readers are tested against), and point-in-time features at one
instant for the batch jobs that answer through the service's own rules (`recsvc nudges`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any


class FeastSource:
    """Reads through the Feast SDK (`get_online_features`): correct, and the slow reference."""

    def __init__(self, feast_store: Any) -> None:
        self.store = feast_store

    def read_service(
        self, service: str, entity_key: str, ids: Sequence[int]
    ) -> Mapping[str, list[Any]]:
        """The service's views keyed by `entity_key` only (a member's part, or the items')."""
        from recsvc.adapters import feast as fstore

        with fstore.feast_errors(f"read {service!r} online"):
            got = self.store.get_online_features(
                features=self.refs(service, entity_key),
                entity_rows=[{entity_key: int(i)} for i in ids],
                full_feature_names=True).to_dict()
        return {k: v for k, v in got.items() if k != entity_key}

    def refs(self, service: str, entity_key: str) -> list[str]:
        """"<view>:<feature>" of the service's views keyed by `entity_key` only (Feast errors
        are the caller's to map)."""
        fs = self.store.get_feature_service(service, allow_cache=True)
        return [f"{p.name_to_use()}:{f.name}" for p in fs.feature_view_projections
                if [c.name for c in self.store.get_feature_view(p.name).entity_columns]
                == [entity_key] for f in p.features]


class AsOfSource:
    """A feature source (`app.ports.FeatureSource`) over point-in-time features at one instant:
    each (service, entity key) is retrieved once for all its ids (`ids[entity key]`) through
    Feast's historical retrieval, then served by id: the latest snapshot at or before the
    instant, within the views' ttl, as the online store held it then."""

    def __init__(self, feast_store: Any, as_of: dt.datetime,
                 ids: Mapping[str, Sequence[int]]) -> None:
        self.store = feast_store
        self.as_of = as_of
        self.ids = ids
        self._tables: dict[tuple[str, str], tuple[dict[int, int], dict[str, list[Any]]]] = {}

    def _load(self, service: str, entity_key: str
              ) -> tuple[dict[int, int], dict[str, list[Any]]]:
        import pandas as pd

        from recsvc.adapters import feast as fstore

        ids = [int(i) for i in self.ids[entity_key]]
        frame = pd.DataFrame({entity_key: ids, "event_timestamp": pd.Timestamp(self.as_of)})
        with fstore.feast_errors(f"read {service!r} as of {self.as_of:%Y-%m-%d}"):
            refs = [r for r in FeastSource(self.store).refs(service, entity_key)
                    if self._has_data(r.split(":", 1)[0])]
            if not refs:
                return {}, {}
            got = self.store.get_historical_features(
                entity_df=frame, features=refs, full_feature_names=True).to_df()
        rows = {int(k): n for n, k in enumerate(got[entity_key].tolist())}
        columns = {name: [_value(v) for v in got[name].tolist()] for name in got.columns
                   if "__" in name}
        return rows, columns

    def _has_data(self, view: str) -> bool:
        """False for a view whose Parquet files do not exist yet (a batch job's output never
        written): its features are missing, as the online store would answer, instead of the
        whole retrieval failing."""
        import glob

        from feast.infra.offline_stores.file_source import FileSource

        source = self.store.get_feature_view(view).batch_source
        return not isinstance(source, FileSource) or bool(glob.glob(source.path))

    def read_service(self, service: str, entity_key: str,
                     ids: Sequence[int]) -> dict[str, list[Any]]:
        key = (service, entity_key)
        if key not in self._tables:
            self._tables[key] = self._load(service, entity_key)
        rows, columns = self._tables[key]
        at = [rows.get(int(i)) for i in ids]
        return {name: [None if n is None else values[n] for n in at]
                for name, values in columns.items()}


def _value(v: Any) -> Any:
    """A retrieved value as the online reader gives it: None for missing, lists for arrays."""
    import numpy as np
    import pandas as pd

    if isinstance(v, np.ndarray | list | tuple):
        return [x.item() if isinstance(x, np.generic) else x for x in v]
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v
