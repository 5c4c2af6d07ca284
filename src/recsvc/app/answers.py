"""What the application is asked and what it answers, as plain values: the transport converts
protobuf to and from these, the batch jobs build them directly."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from recsvc.core import cart, ranking, redemption, segments
from recsvc.core import catalogue as core_catalogue
from recsvc.core import nudges as core_nudges

# why an answer is degraded (the transport maps each to its protobuf enum)
FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
NO_MODEL = "no_model"
CAP_STORE_UNAVAILABLE = "cap_store_unavailable"


@dataclass(frozen=True)
class Stamp:
    """How an answer was made, what every answer carries beside its content: the experiment
    arm the member was given ("" where the RPC runs no experiment), the version of the model
    that scored it ("" for none), why it is degraded (the reasons above), and the member's
    points-fraud flags, which ask the caller to verify before it acts."""

    arm: str = ""
    model_version: str = ""
    degraded: tuple[str, ...] = ()
    verification: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stamped:
    """An answer: its content (a subclass's fields) and its `Stamp`, whose fields read as the
    answer's own."""

    stamp: Stamp = field(kw_only=True)

    @property
    def arm(self) -> str:
        return self.stamp.arm

    @property
    def model_version(self) -> str:
        return self.stamp.model_version

    @property
    def degraded(self) -> tuple[str, ...]:
        return self.stamp.degraded

    @property
    def verification(self) -> tuple[str, ...]:
        return self.stamp.verification


@dataclass(frozen=True)
class Read:
    """Online features read for an answer (ahead of it, off the event loop, by `read_async`):
    {"<view>__<feature>": values}, empty when the store failed (`degraded` says so)."""

    raw: Mapping[str, list[Any]]
    degraded: tuple[str, ...] = ()


class Risk(NamedTuple):
    """One member's churn answer (a named tuple: a batch builds a thousand)."""

    member_id: int
    probability: float
    band: str
    segment: str
    drivers: tuple[tuple[str, float], ...]
    action: segments.Action
    cold_start: bool


@dataclass(frozen=True)
class ChurnAnswer(Stamped):
    risks: list[Risk]
    horizon_days: int = 0  # the probabilities are P(no order within it); 0: no model


@dataclass(frozen=True)
class HintRequest:
    member_id: int
    item_ids: Sequence[int]
    surface: str = "product_page"
    points_balance: int | None = None
    arm: str = ""
    item_field: str = "item_ids"  # how the caller's request names the items ("item_id": one)


class ItemHint(NamedTuple):
    """One item's hint with its item (a named tuple: a batch builds a hundred)."""

    item_id: int
    points_price: int
    hint: redemption.Hint
    propensity: float | None
    alternates: tuple[core_catalogue.Alternate, ...] = ()


@dataclass(frozen=True)
class HintAnswer(Stamped):
    hints: list[ItemHint]


@dataclass(frozen=True)
class RecommendRequest:
    member_id: int
    limit: int = 0
    categories: Sequence[str] = ()
    max_points_price: int = 0
    affordable_only: bool = False
    surface: str = "points_centre"
    points_balance: int | None = None
    arm: str = ""


@dataclass(frozen=True)
class RecommendAnswer(Stamped):
    options: list[ranking.Option]
    unlocks: list[ranking.Unlock]
    points_balance: int
    expiring_points: int
    next_expiry: dt.datetime | None


@dataclass(frozen=True)
class CartRequest:
    member_id: int
    lines: Sequence[cart.CartLine]
    points_balance: int | None = None
    arm: str = ""


@dataclass(frozen=True)
class CartAnswer(Stamped):
    split: cart.CartSplit


@dataclass(frozen=True)
class NudgeRequest:
    member_id: int
    channel: str = "in_app"
    points_balance: int | None = None
    arm: str = ""
    dry_run: bool = False
    surface: str = "points_centre"  # what the propensity model is told the options are shown on


@dataclass(frozen=True)
class NudgeAnswer(Stamped):
    nudges: list[core_nudges.Nudge]
    capped: list[core_nudges.Capped]
