"""A member as the answers need them (`Context`): the profile the core ranks and hints with, the
points by lapse instant, the fraud flags and the behaviour weight, built from the member's
features once (`profile`) and kept between calls while the features read the same and none of
the member's points lapse (`Profiles`: bounded, emptied when full, as the readers' row caches
are)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.adapters.row_cache import HeldColumns
from recsvc.config import Programme
from recsvc.core import cart, fraud, ranking
from recsvc.core import index as idx
from recsvc.data.views import feature_name

MEMBER_INPUTS_KEPT = 50_000  # member Contexts (profile, model inputs) kept between calls


@dataclass(frozen=True)
class Context:
    """A member as the answers need them: features by name, the profile the core ranks and
    hints with, and the points by lapse instant (reconciled with the balance used)."""

    features: dict[str, Any]
    cold: bool
    member: ranking.Member
    points: cart.PointsBalance
    tier: str | None
    flags: tuple[str, ...] = ()
    """Points-fraud flags: the answers ask for a second verification (nothing is blocked)."""
    model_inputs: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    """The member's propensity inputs by model version, encoded on first use (as the row
    template the requests' rows start from: `PropensityRows.template`)."""
    behaviour: float = 0.0
    """The member's behaviour weight: the index factor that depends on the member alone."""


@dataclass(frozen=True)
class _Kept:
    """A member's Context kept between calls, while the features read are `raw` and no lot of
    points has lapsed since (before `until`, epoch seconds)."""

    raw: tuple[Any, ...]  # `snapshot` of the read: not tracked by the garbage collector
    until: float
    context: Context


def snapshot(raw: Mapping[str, list[Any]]) -> tuple[Any, ...]:
    """A one-member read as one tuple of plain values (lists as tuples): compared as the read
    is, and, holding nothing mutable, left alone by the cyclic garbage collector. A read from
    a reader's row cache is that already (`HeldColumns.snapshot`: no columns built for it)."""
    if isinstance(raw, HeldColumns):
        return raw.snapshot
    return tuple((k, tuple(v[0]) if isinstance(v[0], list) else v[0]) for k, v in raw.items())


def features_of(raw: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A one-member read as {feature name: value} (join keys by their own name); a read from
    a reader's row cache gives the row it holds (`HeldColumns.record`: no columns built)."""
    if isinstance(raw, HeldColumns):
        return raw.record()
    return {feature_name(k): v[0] for k, v in raw.items()}


def profile(p: Programme, raw: Mapping[str, list[Any]], balance: int | None,
            now: dt.datetime) -> tuple[Context, float]:
    """The Context of a member's features, and until when it holds (the next lapse of
    the member's points, epoch seconds)."""
    f = features_of(raw)
    cold = all(v is None for v in f.values())

    def num(name: str, default: float) -> float:
        value = f.get(name)
        return default if value is None else float(value)

    stored = int(num("points_balance", 0))
    live = stored if balance is None else balance
    tier = f.get("tier") if isinstance(f.get("tier"), str) else None
    member = ranking.Member(
        balance=live, expiring_points=int(num("points_expiring_30d", 0)),
        orders_90d=num("orders_90d", 0.0),
        days_since_last_order=num("days_since_last_order", float("inf")),
        young=f.get("age_band") in p.index.young_age_bands,
        high_spender=idx.high_spender(p.index, num("avg_order_value_365d_minor", math.nan),
                                      p.currency.minor_per_unit),
        tier_multiplier=p.earning.tier_multipliers.get(tier, 1.0) if tier else 1.0)
    lots = list(zip(f.get("expiry_at_s") or [], f.get("expiry_points") or [], strict=True))
    points = cart.PointsBalance.reconcile(lots, live, now, same_snapshot=balance is None)
    if balance is None and points.total != live:  # lots lapsed since the snapshot
        member = dataclasses.replace(member, balance=points.total)
    cut = now.timestamp()
    until = min((at for at, pts in lots if pts > 0 and at > cut), default=math.inf)
    return Context(f, cold, member, points, tier, fraud.split_flags(f.get("fraud_flags")),
                   {}, ranking.behaviour(p, member)), until


class Profiles:
    """Members' Contexts kept between calls, by (feature service, member, balance sent): one
    is answered again while its features read the same and none of its points have lapsed."""

    def __init__(self, programme: Programme | None) -> None:
        self.programme = programme
        self._kept: dict[tuple[str, int, int | None], _Kept] = {}

    def get(self, key: tuple[str, int, int | None], raw: Mapping[str, list[Any]],
            balance: int | None, now: dt.datetime) -> Context:
        kept = self._kept.get(key)
        seen = snapshot(raw)
        if kept is not None and now.timestamp() < kept.until and kept.raw == seen:
            return kept.context
        assert self.programme is not None
        context, until = profile(self.programme, raw, balance, now)
        if len(self._kept) >= MEMBER_INPUTS_KEPT:
            self._kept.clear()
        self._kept[key] = _Kept(seen, until, context)
        return context
