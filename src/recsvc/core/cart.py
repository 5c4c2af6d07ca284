"""The cart optimiser: the exact, rule-abiding split of an order into points and cash.

`optimize_cart` answers the cart service's question "how many points should this order use, and
how much cash is left to pay?" (SPEC §1, §3, §7; issue 5, OptimizeCartSplit). Everything is
integer arithmetic on points and minor currency units; floats appear only in the advice text.

Conversion. With ``M = currency.minor_per_unit`` and ``P = burning.points_per_unit``, ``p``
points are worth ``p · M / P`` minor units (1 point = 1 minor unit with the defaults). Money is
never fractional, so only point amounts worth a whole number of minor units are used: the
*points quantum* ``q = P / gcd(M, P)`` points is worth ``v = M / gcd(M, P)`` minor units, and the
usable amounts are the multiples of the *effective step* ``lcm(min_points_step, q)`` (that is
``min_points_step`` itself with the defaults). Nothing is rounded: points value = p · M / P exactly.

The limits, each expressed as a largest number of points (before stepping):

- ``balance``: the member's points (the sum of the balance's buckets);
- ``share_cap``: the points' value may not exceed ``floor(max_order_share × eligible subtotal)``
  minor units; the share is taken as the decimal written in the rules (0.3 is 3/10, not the
  binary float just under it);
- ``tiered_cap``: ``max_points`` of the highest ``deduction_caps`` row whose ``min_order_units``
  ≤ the order total in units, where the order total is the *whole* order (eligible lines or
  not), before any deduction; when the table has rows but none matches, no points may be used;
  an empty table means no tiered cap;
- ``eligibility``: only eligible lines can be paid with points, each with at most its own total,
  in whole quanta: ``Σ floor(eligible line total / v) · q`` points (the eligible subtotal itself
  with the defaults).

``points_used`` is the largest multiple of the effective step under the smallest limit ``L``: the
limits are all upper bounds, so that is the optimum (minimum cash).

Binding rule (``CartSplit.binding_rule``), the constraint that stopped more points being used:

1. ``"none"`` when the order total is 0: there is nothing to pay, so nothing limited the points;
2. ``"min_step"`` when ``points_used < L``: some limit would allow more points, but not a whole
   further step (e.g. a balance of 250 with steps of 100: 200 points are used);
3. otherwise the limit equal to ``L``; when several are equal, the first of ``eligibility``,
   ``balance``, ``tiered_cap``, ``share_cap`` (facts about the cart and the member before the
   programme's rules, and the tier table before the share, which it usually overrides).

Allocation to lines: proportional to the eligible line totals by the largest-remainder method in
whole quanta (whole points with the defaults), ties to the earlier line, so per-line points,
values and cash add up to the totals exactly. A line never gets more than its own total: with the
defaults proportionality already guarantees it; otherwise a line that would is held at its total
and the rest is re-shared among the others.

Points are taken from the buckets that expire first (`recsvc.core.ledger.burn_fifo`). The buckets
passed in are the member's live ones: expired points are the caller's to drop.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import numpy.typing as npt

from recsvc.config import Programme
from recsvc.core import ledger
from recsvc.errors import InvalidArgument

MAX_LINES = 500
_INT64_MAX = 2**63 - 1  # burn_fifo works on int64 arrays

BindingRule = Literal["none", "balance", "share_cap", "tiered_cap", "min_step", "eligibility"]
BINDING_RULES: tuple[BindingRule, ...] = (
    "none",
    "balance",
    "share_cap",
    "tiered_cap",
    "min_step",
    "eligibility",
)
NO_EXPIRY = dt.datetime.max.replace(tzinfo=dt.UTC)
"""The lapse instant of points whose lapse is not known (burnt after every dated lot)."""
# Tie-break among limits that are equally tight (see the module docstring).
_PRECEDENCE: tuple[BindingRule, ...] = ("eligibility", "balance", "tiered_cap", "share_cap")


@dataclass(frozen=True, slots=True)
class CartLine:
    """One order line; money in integer minor units."""

    item_id: int
    unit_price_minor: int
    quantity: int
    points_eligible: bool

    @property
    def total_minor(self) -> int:
        return self.unit_price_minor * self.quantity


@dataclass(frozen=True, slots=True)
class PointsBalance:
    """A member's spendable points as (expiry instant, points) buckets, in any order."""

    buckets: tuple[tuple[dt.datetime, int], ...] = ()

    @property
    def total(self) -> int:
        return sum(points for _, points in self.buckets)

    @classmethod
    def from_expiry_months(cls, buckets: Mapping[int, int]) -> PointsBalance:
        """From ledger buckets keyed by expiry month (months since 1970-01); empty ones dropped."""
        return cls(
            tuple(
                (ledger.expiry_instant(int(month)), int(points))
                for month, points in sorted(buckets.items())
                if points
            )
        )

    @classmethod
    def reconcile(cls, lots: Sequence[tuple[int, int]], balance: int, now: dt.datetime, *,
                  same_snapshot: bool = False) -> PointsBalance:
        """The lots known at the last snapshot ((lapse instant in epoch seconds, points)), made
        to agree with `balance`, the member's points now.

        Lots lapsed by `now` are dropped, and when the balance comes from the same snapshot as
        the lots (`same_snapshot`) their points come off it too. Points spent since then (the
        balance below the lots' total) come off the earliest lots, as every burn does. Points
        the lots do not hold (earned since the snapshot, or never lapsing) form one bucket
        with no known lapse, `NO_EXPIRY`, burnt last.
        """
        if balance < 0:
            raise InvalidArgument("points_balance", f"must be >= 0, got {balance}")
        cut = now.timestamp()
        live = sorted((at, pts) for at, pts in lots if pts > 0 and at > cut)
        if same_snapshot:
            balance = max(balance - sum(pts for at, pts in lots if pts > 0 and at <= cut), 0)
        held = np.array([pts for _, pts in live], dtype=np.int64)
        total = int(held.sum())
        if balance < total:
            held, _ = ledger.burn_fifo(held, total - balance)
        buckets = [(dt.datetime.fromtimestamp(at, dt.UTC), int(pts))
                   for (at, _), pts in zip(live, held.tolist(), strict=True) if pts]
        if balance > total:
            buckets.append((NO_EXPIRY, balance - total))
        return cls(tuple(buckets))

    @classmethod
    def from_bucket_row(
        cls, row: Sequence[int] | npt.NDArray[np.int64], first_expiry_month: int
    ) -> PointsBalance:
        """From a ledger bucket row whose column c lapses at the end of month first + c."""
        return cls.from_expiry_months(
            {first_expiry_month + col: int(points) for col, points in enumerate(row)}
        )


@dataclass(frozen=True, slots=True)
class LineAllocation:
    """How one line is paid: ``points_value_minor + cash_minor == line_total_minor``."""

    item_id: int
    line_total_minor: int
    points: int
    points_value_minor: int
    cash_minor: int


@dataclass(frozen=True, slots=True)
class CartSplit:
    """The optimal split; ``points_value_minor + cash_minor == order_total_minor`` exactly."""

    points_used: int
    cash_minor: int
    order_total_minor: int
    points_value_minor: int
    lines: tuple[LineAllocation, ...]
    binding_rule: BindingRule
    buckets_used: tuple[tuple[dt.datetime, int], ...]
    advice: str | None
    keep_points: bool


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a quantity is a caller's bug, not 1
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(lines: Sequence[CartLine], balance: PointsBalance) -> None:
    if not lines:
        raise InvalidArgument("lines", "at least one line is required")
    if len(lines) > MAX_LINES:
        raise InvalidArgument("lines", f"at most {MAX_LINES} lines, got {len(lines)}")
    for i, line in enumerate(lines):
        for name in ("item_id", "unit_price_minor", "quantity"):
            if not _is_int(getattr(line, name)):
                raise InvalidArgument(f"lines[{i}].{name}", "must be an integer")
        if line.item_id < 1:
            raise InvalidArgument(f"lines[{i}].item_id",
                                  f"must be >= 1 (ids start at 1), got {line.item_id}")
        if line.unit_price_minor < 0:
            raise InvalidArgument(
                f"lines[{i}].unit_price_minor", f"must be >= 0, got {line.unit_price_minor}"
            )
        if line.quantity < 1:
            raise InvalidArgument(f"lines[{i}].quantity", f"must be >= 1, got {line.quantity}")
        if not isinstance(line.points_eligible, bool):
            raise InvalidArgument(f"lines[{i}].points_eligible", "must be a boolean")
    for i, bucket in enumerate(balance.buckets):
        expiry, points = bucket
        # aware instants only: a naive one cannot be ordered against the ledger's UTC instants
        if not isinstance(expiry, dt.datetime) or expiry.utcoffset() is None:
            raise InvalidArgument(
                f"balance.buckets[{i}].expiry", "must be a timezone-aware datetime"
            )
        if not _is_int(points):
            raise InvalidArgument(f"balance.buckets[{i}].points", "must be an integer")
        if points < 0:
            raise InvalidArgument(f"balance.buckets[{i}].points", f"must be >= 0, got {points}")
    if balance.total > _INT64_MAX:
        raise InvalidArgument("balance.buckets", "total points out of range")


def _decimal_fraction(value: float) -> Fraction:
    # repr is the shortest decimal that round-trips: the number the rules file wrote
    return Fraction(repr(float(value)))


def _tiered_cap(programme: Programme, order_total_minor: int) -> int | None:
    caps = programme.burning.deduction_caps
    if not caps:
        return None
    minor_per_unit = programme.currency.minor_per_unit
    allowed = 0  # below the smallest threshold: no points at all
    for row in caps:  # ascending by min_order_units (validated in config)
        if row.min_order_units * minor_per_unit <= order_total_minor:
            allowed = row.max_points
    return allowed


def _largest_remainder(count: int, weights: list[int]) -> list[int]:
    """Split `count` units proportionally to `weights` (sum > 0), ties to the earlier index."""
    total = sum(weights)
    shares = [count * w // total for w in weights]
    left = count - sum(shares)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(count * weights[i] % total), i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares


def _allocate(count: int, totals: list[int], caps: list[int]) -> list[int]:
    """Proportional whole-quantum shares of `count` with share[i] <= caps[i].

    Requires count <= sum(caps). A line whose proportional share exceeds its cap is held at
    the cap and the remainder re-shared among the others; each pass fixes at least one line.
    """
    shares = [0] * len(totals)
    active = [i for i, t in enumerate(totals) if t > 0]
    remaining = count
    while remaining and active:
        trial = _largest_remainder(remaining, [totals[i] for i in active])
        over = [i for i, s in zip(active, trial, strict=True) if s > caps[i]]
        if not over:
            for i, s in zip(active, trial, strict=True):
                shares[i] = s
            return shares
        for i in over:
            shares[i] = caps[i]
            remaining -= caps[i]
        active = [i for i in active if i not in over]
    if remaining:  # pragma: no cover - count <= sum(caps) is checked by the caller
        raise AssertionError("allocation exceeds the lines' capacity")
    return shares


def _burn(balance: PointsBalance, points: int) -> tuple[tuple[dt.datetime, int], ...]:
    merged: dict[dt.datetime, int] = {}
    for expiry, held in balance.buckets:  # equal instants are one FIFO bucket
        merged[expiry] = merged.get(expiry, 0) + held
    order = sorted(merged)
    if not order:
        return ()
    held_arr = np.array([merged[e] for e in order], dtype=np.int64)
    _, taken = ledger.burn_fifo(held_arr, points)
    return tuple((e, int(t)) for e, t in zip(order, taken.tolist(), strict=True) if t > 0)


def _format_amount(minor: Fraction | float, minor_per_unit: int) -> str:
    decimals = len(str(minor_per_unit - 1)) if minor_per_unit > 1 else 0
    return f"{float(minor) / minor_per_unit:,.{decimals}f}"


def _advice(points: int, value_minor: int, keep_value: float, programme: Programme) -> str:
    m = programme.currency.minor_per_unit
    per_point_here = 1 / programme.burning.points_per_unit
    elsewhere_minor = points * keep_value * m
    return (
        f"Consider keeping the points: {points:,} points are worth about "
        f"{_format_amount(elsewhere_minor, m)} elsewhere ({keep_value:.6g} per point) but "
        f"{_format_amount(value_minor, m)} off this order ({per_point_here:.6g} per point)."
    )


def optimize_cart(
    programme: Programme,
    lines: Sequence[CartLine],
    balance: PointsBalance,
    *,
    keep_value_per_point: float | None = None,
) -> CartSplit:
    """The split of an order into points and cash that uses the most points the rules allow.

    The tiered deduction cap looks at the whole order total (eligible lines or not), in currency
    units, before any deduction. See the module docstring for the conversion, every limit, the
    binding-rule definition and the per-line allocation.

    `keep_value_per_point` is the value, in currency units per point, the member could get for
    the points elsewhere (e.g. the value coefficient of an item they want). When it exceeds the
    cash value of a point here (1 / burning.points_per_unit) and the split uses points, the split
    is still the optimal one but ``keep_points`` is True and ``advice`` says, with the numbers,
    how much more keeping the points is worth.

    Raises InvalidArgument naming the field (``lines``, ``lines[2].quantity``,
    ``balance.buckets[0].points``, ``keep_value_per_point``, ...) for invalid input.
    """
    _validate(lines, balance)
    if keep_value_per_point is not None and (
        isinstance(keep_value_per_point, bool)
        or not isinstance(keep_value_per_point, int | float)
        or not math.isfinite(keep_value_per_point)
        or keep_value_per_point < 0
    ):
        raise InvalidArgument("keep_value_per_point", "must be a finite number >= 0")

    burning = programme.burning
    m, p = programme.currency.minor_per_unit, burning.points_per_unit
    g = math.gcd(m, p)
    quantum_points, quantum_minor = p // g, m // g
    step = math.lcm(burning.min_points_step, quantum_points)

    totals = [line.total_minor for line in lines]
    order_total = sum(totals)
    eligible = [t if line.points_eligible else 0 for line, t in zip(lines, totals, strict=True)]
    eligible_subtotal = sum(eligible)
    # whole quanta each line can take without exceeding its own total
    line_quanta = [t // quantum_minor for t in eligible]

    share_minor = math.floor(_decimal_fraction(burning.max_order_share) * eligible_subtotal)
    limits: dict[BindingRule, int] = {
        "eligibility": sum(line_quanta) * quantum_points,
        "balance": balance.total,
        "share_cap": share_minor * p // m,
    }
    tiered = _tiered_cap(programme, order_total)
    if tiered is not None:
        limits["tiered_cap"] = tiered
    limit = min(limits.values())
    points_used = limit // step * step

    binding: BindingRule
    if order_total == 0:
        binding = "none"
    elif points_used < limit:
        binding = "min_step"
    else:
        binding = next(rule for rule in _PRECEDENCE if limits.get(rule) == limit)

    quanta = _allocate(points_used // quantum_points, eligible, line_quanta)
    allocations = tuple(
        LineAllocation(
            item_id=line.item_id,
            line_total_minor=total,
            points=k * quantum_points,
            points_value_minor=k * quantum_minor,
            cash_minor=total - k * quantum_minor,
        )
        for line, total, k in zip(lines, totals, quanta, strict=True)
    )
    points_value = points_used // quantum_points * quantum_minor

    keep_points = (
        keep_value_per_point is not None
        and points_used > 0
        and _decimal_fraction(keep_value_per_point) > Fraction(1, p)
    )
    advice = (
        _advice(points_used, points_value, float(keep_value_per_point), programme)
        if keep_points and keep_value_per_point is not None
        else None
    )
    return CartSplit(
        points_used=points_used,
        cash_minor=order_total - points_value,
        order_total_minor=order_total,
        points_value_minor=points_value,
        lines=allocations,
        binding_rule=binding,
        buckets_used=_burn(balance, points_used),
        advice=advice,
        keep_points=keep_points,
    )
