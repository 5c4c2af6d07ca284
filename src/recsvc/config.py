"""Programme rules: one validated TOML file read by the simulator, feature jobs and service."""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from collections.abc import Mapping
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsvc.defaults import CHANNELS
from recsvc.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Currency(_Section):
    minor_per_unit: int = Field(100, gt=0)


class Earning(_Section):
    points_per_unit: int = Field(1, ge=0)
    double_points_days: tuple[str, ...] = ("06-18", "11-11")
    double_points_multiplier: float = Field(2.0, ge=1.0)
    tier_multipliers: dict[str, float] = {"silver": 1.0, "gold": 1.2, "diamond": 1.5}
    category_multipliers: dict[str, float] = {}

    @model_validator(mode="after")
    def _check(self) -> Self:
        for day in self.double_points_days:
            try:
                dt.datetime.strptime(f"2000-{day}", "%Y-%m-%d")
            except ValueError as exc:
                raise ValueError(f"double_points_days: {day!r} is not MM-DD") from exc
        for name, table in (
            ("tier_multipliers", self.tier_multipliers),
            ("category_multipliers", self.category_multipliers),
        ):
            for key, value in table.items():
                if not value > 0:
                    raise ValueError(f"{name}.{key}: must be > 0, got {value}")
        return self


class DeductionCap(_Section):
    min_order_units: int = Field(ge=0)
    max_points: int = Field(ge=0)


class Burning(_Section):
    points_per_unit: int = Field(100, gt=0)
    min_points_step: int = Field(100, gt=0)
    max_order_share: float = Field(0.5, gt=0.0, le=1.0)
    deduction_caps: tuple[DeductionCap, ...] = (
        DeductionCap(min_order_units=100, max_points=1000),
        DeductionCap(min_order_units=200, max_points=3000),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        mins = [c.min_order_units for c in self.deduction_caps]
        if mins != sorted(set(mins)):
            raise ValueError("deduction_caps: min_order_units must be strictly ascending")
        caps = [c.max_points for c in self.deduction_caps]
        if caps != sorted(caps):
            raise ValueError("deduction_caps: max_points must not fall as orders grow")
        return self


class Expiry(_Section):
    ordinary_months: int = Field(12, gt=0)
    high_value_months: int = Field(24, gt=0)
    high_value_tiers: tuple[str, ...] = ("diamond",)
    reminder_days: int = Field(30, gt=0)
    urgent_days: int = Field(3, gt=0)


class Tiers(_Section):
    order: tuple[str, ...] = ("silver", "gold", "diamond")
    min_spend_units: tuple[int, ...] = (0, 5000, 20000)
    downgrade_observation_days: int = Field(30, ge=0)
    benefit_transition_months: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(self.order) != len(self.min_spend_units) or not self.order:
            raise ValueError("order and min_spend_units must have the same, non-zero length")
        if self.min_spend_units[0] != 0:
            raise ValueError("min_spend_units: the first tier must start at 0")
        if list(self.min_spend_units) != sorted(set(self.min_spend_units)):
            raise ValueError("min_spend_units: must be strictly ascending")
        return self


class Gifts(_Section):
    low_below: int = Field(100, gt=0)
    high_above: int = Field(500, gt=0)


class LowBalance(_Section):
    below: int = Field(100, ge=0)


class IndexRules(_Section):
    hint_threshold: float = Field(0.06, gt=0)
    vacuum_threshold: float = Field(0.03, ge=0)
    campaign_multiplier: float = Field(1.0, gt=0)
    young_behaviour_multiplier: float = Field(1.2, gt=0)
    high_spender_discount: float = Field(0.9, gt=0, le=1.0)
    high_spender_min_aov_units: float = Field(300.0, gt=0)
    behaviour_floor: float = Field(0.5, ge=0, le=1.0)
    frequency_scale_orders: float = Field(3.0, gt=0)
    recency_scale_days: float = Field(60.0, gt=0)
    young_age_bands: tuple[str, ...] = ("18-24",)
    # the points a member the store does not know is taken to be ready to spend, for the index
    # of a cold-start ranking (a caller's live balance, when sent, is used instead)
    cold_start_points_demand: int = Field(1000, ge=0)
    points_class_coefficients: dict[str, float] = {"base": 0.05, "growth": 0.075, "luxury": 0.10}


class Inventory(_Section):
    safety_share: float = Field(0.2, gt=0, le=1.0)
    slow_mover_days: int = Field(90, gt=0)
    delist_redemption_rate: float = Field(0.05, ge=0, le=1.0)
    delist_months: int = Field(3, gt=0)
    alternates: int = Field(3, ge=2, le=10)


NUDGE_KINDS = ("expiry", "expiry_urgent", "low_balance", "unlock_close", "item")


class NudgeCap(_Section):
    """At most `max` nudges of `kind` per member (and per item, for kind "item": the same item
    suggested) on `channel` ("*": all channels together) in any `window_hours`."""

    name: str = Field(pattern=r"^[a-z0-9_]{1,40}$")
    kind: str
    channel: str = "*"
    max: int = Field(ge=0)
    window_hours: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.kind not in NUDGE_KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {list(NUDGE_KINDS)}")
        if self.channel != "*" and self.channel not in CHANNELS:
            raise ValueError(f"channel: {self.channel!r} is not '*' or one of {list(CHANNELS)}")
        return self


class Nudges(_Section):
    options: int = Field(3, ge=1, le=20)
    """Ways to use the points offered with an expiry or low-balance nudge."""
    unlock_close_share: float = Field(0.2, gt=0, le=1.0)
    """A category unlock is "close" when the gap is at most this share of its threshold."""
    caps: tuple[NudgeCap, ...] = (
        NudgeCap(name="expiry_weekly", kind="expiry", max=1, window_hours=168),
        NudgeCap(name="urgent_daily", kind="expiry_urgent", max=1, window_hours=24),
        NudgeCap(name="low_balance_weekly", kind="low_balance", max=1, window_hours=168),
        NudgeCap(name="unlock_weekly", kind="unlock_close", max=1, window_hours=168),
        NudgeCap(name="same_item_daily", kind="item", max=3, window_hours=24),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [c.name for c in self.caps]
        if len(set(names)) != len(names):
            raise ValueError(f"caps: names must be unique, got {names}")
        return self


class Fraud(_Section):
    burst_redemptions: int = Field(5, ge=2)
    """Many redemptions in a short window: at least this many ..."""
    burst_window_minutes: float = Field(60.0, gt=0)
    """... within this many minutes."""
    drain_share: float = Field(0.9, gt=0, le=1.0)
    """A redemption burning at least this share of the balance before it ..."""
    drain_min_points: int = Field(3000, ge=0)
    """... when that balance was at least this many points, is a balance drain."""
    loop_window_hours: float = Field(24.0, gt=0)
    """Points burnt within this many hours of being earned close one earn-then-burn loop ..."""
    loop_count: int = Field(3, ge=1)
    """... and this many loops within `lookback_days` flag the member."""
    lookback_days: int = Field(30, gt=0)
    """Rules look at this many days of ledger events before the as-of instant."""
    anomaly_contamination: float = Field(0.005, gt=0, lt=0.5)
    """Share of members the isolation forest flags as anomalous."""


class Churn(_Section):
    horizon_days: int = Field(90, ge=1, le=730)
    """A churn probability is P(no order within this many days): the default horizon of
    training, batch scoring and the answers (`--horizon-days` overrides it per job)."""


class Liability(_Section):
    horizon_months: int = Field(12, gt=0, le=60)
    bootstrap_samples: int = Field(200, ge=20)
    interval: float = Field(0.9, gt=0, lt=1)
    """Width of the bootstrap interval (0.9: the 5th to the 95th percentile)."""


class Arm(_Section):
    """One variant of the ranking strategy; unset fields keep the programme's values."""

    name: str = Field(pattern=r"^[a-z0-9_]{1,32}$")
    weight: float = Field(gt=0)
    hint_threshold: float | None = Field(None, gt=0)
    propensity_weight: float = Field(1.0, ge=0)
    """Ranking score = index × propensity^propensity_weight (0: the index alone)."""


class Experiments(_Section):
    salt: str = "recsvc-ranking-v1"
    """Changing the salt reshuffles every member into arms: a new experiment."""
    arms: tuple[Arm, ...] = (Arm(name="control", weight=1.0),)

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [a.name for a in self.arms]
        if not names:
            raise ValueError("arms: at least one arm")
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        return self


class Programme(_Section):
    """The whole programme configuration; construct with `load_programme`."""

    currency: Currency = Currency()
    earning: Earning = Earning()
    burning: Burning = Burning()
    expiry: Expiry = Expiry()
    tiers: Tiers = Tiers()
    gifts: Gifts = Gifts()
    unlocks: dict[str, int] = {"kitchenware": 2000, "furniture": 5000}
    low_balance: LowBalance = LowBalance()
    index: IndexRules = IndexRules()
    inventory: Inventory = Inventory()
    nudges: Nudges = Nudges()
    fraud: Fraud = Fraud()
    churn: Churn = Churn()
    liability: Liability = Liability()
    experiments: Experiments = Experiments()

    @model_validator(mode="after")
    def _cross_check(self) -> Self:
        missing = set(self.tiers.order) - set(self.earning.tier_multipliers)
        if missing:
            raise ValueError(
                f"earning.tier_multipliers: no multiplier for tier(s) {sorted(missing)}"
            )
        unknown = set(self.expiry.high_value_tiers) - set(self.tiers.order)
        if unknown:
            raise ValueError(f"expiry.high_value_tiers: unknown tier(s) {sorted(unknown)}")
        if self.gifts.low_below > self.gifts.high_above:
            raise ValueError("gifts: low_below must not exceed high_above")
        return self

    @cached_property
    def minor_per_point(self) -> float:
        """Cash value of one point in minor units when burned (1.0 with the defaults)."""
        return self.currency.minor_per_unit / self.burning.points_per_unit


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_programme(data: Mapping[str, Any], source: str = "<programme>") -> Programme:
    """Validate a mapping as programme rules, raising ConfigError naming the bad key."""
    try:
        return Programme.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def load_programme(path: str | os.PathLike[str] | None = None) -> Programme:
    """Load the rules from `path` (Settings.programme, $RECSVC_PROGRAMME), else the defaults."""
    if path:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read programme file: {exc.strerror}") from None
    else:
        source = "recsvc/programme.toml"
        text = resources.files("recsvc").joinpath("programme.toml").read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_programme(data, source)
