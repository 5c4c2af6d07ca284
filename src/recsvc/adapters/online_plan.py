"""What an online read reads, compiled once per request shape: the views as the store holds
them (`ViewSpec`), the output columns and their decoders (`Column`), one request shape
(`Plan`), a feature service's use of a view (`ProjectionSpec`), and the fetched blobs decoded
into columns. The readers (`online_redis`, `online_sqlite`) fetch; `online` builds the plans
from the Feast registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recsvc.adapters.feast_codec import EntityKeyCodec
from recsvc.data.views import feature_name

if TYPE_CHECKING:
    from feast.value_type import ValueType

Decoder = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------
# What a request reads: views and features from the registry, compiled once per request shape.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewSpec:
    """A feature view as the online store holds it."""

    name: str  # the registry's name
    stored: str  # its name in the online store (with a version suffix when versioning is on)
    join_key: str | None  # None: a view on several join keys (or none), not read here
    features: tuple[tuple[str, ValueType], ...]
    codec: EntityKeyCodec | None


@dataclass(frozen=True)
class Column:
    """One output column and how to decode it."""

    name: str  # the output name, "<view or alias>__<feature>"
    view: ViewSpec
    feature: str
    decode: Decoder
    scalar: bool  # its Python values are immutable, so a cached row's may be shared


@dataclass
class Plan:
    """One request shape: its columns (views in request order, features in view order) and
    whatever the backend precomputed for them."""

    action: str  # names the read in error messages
    entity_key: str
    columns: tuple[Column, ...]
    codec: EntityKeyCodec
    backend: Any = None
    names: tuple[str, ...] = field(init=False)  # of the columns: strings, untracked by the gc
    short_names: tuple[str, ...] = field(init=False)  # the features' own, without "<view>__"

    def __post_init__(self) -> None:
        self.names = tuple(c.name for c in self.columns)
        self.short_names = tuple(feature_name(n) for n in self.names)


@dataclass(frozen=True)
class ProjectionSpec:
    """A feature service's use of a view: output prefix (its alias or name), view, features."""

    prefix: str
    view: str
    features: tuple[str, ...]


# service name -> (its projections, whether it has precompute_online)
Services = dict[str, tuple[tuple[ProjectionSpec, ...], bool]]


def decode_columns(plan: Plan, slots: list[Any]) -> dict[str, list[Any]]:
    """Fetched blobs as the plan's columns of Python values; `slots` holds rows of
    len(columns) blobs, row-major, so a column is a stride."""
    width = len(plan.columns)
    return {c.name: list(map(c.decode, slots[j::width])) for j, c in enumerate(plan.columns)}
