"""The cart optimiser: SPEC examples, invariants, optimality against brute force, FIFO, errors."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.config import Programme, load_programme, parse_programme
from recsvc.core import ledger
from recsvc.core.cart import (
    BINDING_RULES,
    MAX_LINES,
    NO_EXPIRY,
    CartLine,
    CartSplit,
    PointsBalance,
    optimize_cart,
)
from recsvc.errors import InvalidArgument

P = load_programme()
UNIT = P.currency.minor_per_unit  # 100 minor units per currency unit
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def bal(*points: int) -> PointsBalance:
    """Buckets lapsing one month apart, the first soonest."""
    return PointsBalance(tuple((T0 + dt.timedelta(days=31 * i), p) for i, p in enumerate(points)))


def line(price_units: float, qty: int = 1, eligible: bool = True, item: int = 1) -> CartLine:
    return CartLine(item, round(price_units * UNIT), qty, eligible)


# ------------------------------------------------------------------ SPEC §3 worked examples


def test_order_of_150_is_capped_at_1000_points_by_the_tier_table() -> None:
    split = optimize_cart(P, [line(150)], bal(5000))
    assert split.points_used == 1000
    assert split.points_value_minor == 1000  # 1,000 points = 10.00
    assert split.cash_minor == 15000 - 1000
    assert split.binding_rule == "tiered_cap"


def test_order_of_250_may_use_3000_points() -> None:
    split = optimize_cart(P, [line(100, 2), line(50, item=2)], bal(5000))
    assert split.order_total_minor == 25000
    assert split.points_used == 3000
    assert split.cash_minor == 22000
    assert split.binding_rule == "tiered_cap"


def test_order_below_the_smallest_threshold_uses_no_points() -> None:
    split = optimize_cart(P, [line(80)], bal(5000))
    assert split.points_used == 0 and split.cash_minor == 8000
    assert split.binding_rule == "tiered_cap"
    assert split.buckets_used == ()
    # the threshold is inclusive: 100.00 exactly qualifies, 99.99 does not
    assert optimize_cart(P, [CartLine(1, 10000, 1, True)], bal(5000)).points_used == 1000
    assert optimize_cart(P, [CartLine(1, 9999, 1, True)], bal(5000)).points_used == 0


def test_balance_not_a_whole_step_reports_min_step() -> None:
    split = optimize_cart(P, [line(150)], bal(250))
    assert split.points_used == 200
    assert split.binding_rule == "min_step"
    # a balance that is a whole number of steps is reported as the balance
    assert optimize_cart(P, [line(150)], bal(300)).binding_rule == "balance"


def test_share_cap_binds_on_a_small_eligible_part() -> None:
    # 250.00 order, only 12.34 of it eligible: at most 6.17 by points, 600 points in steps
    split = optimize_cart(P, [line(12.34), line(237.66, eligible=False, item=2)], bal(5000))
    assert split.points_used == 600
    assert split.binding_rule == "min_step"
    # 12.00 eligible: 6.00 exactly, the share cap itself binds
    split = optimize_cart(P, [line(12), line(238, eligible=False, item=2)], bal(5000))
    assert split.points_used == 600
    assert split.binding_rule == "share_cap"


def test_ineligible_lines_get_no_points_and_the_tier_sees_the_whole_order() -> None:
    lines = [line(30, item=7), line(200, eligible=False, item=8), line(20, qty=2, item=9)]
    split = optimize_cart(P, lines, bal(5000))
    # whole order 270.00 → tier 3,000; eligible 70.00 → share cap 35.00 = 3,500 points
    assert split.points_used == 3000 and split.binding_rule == "tiered_cap"
    assert [a.item_id for a in split.lines] == [7, 8, 9]  # request order
    assert split.lines[1].points == 0 and split.lines[1].cash_minor == 20000
    # proportional to the eligible totals 30 : 40
    assert [a.points for a in split.lines] == [1286, 0, 1714]


def test_no_eligible_line_reports_eligibility() -> None:
    split = optimize_cart(P, [line(300, eligible=False)], bal(5000))
    assert split.points_used == 0 and split.binding_rule == "eligibility"


def test_all_zero_priced_cart_is_valid() -> None:
    split = optimize_cart(P, [CartLine(1, 0, 3, True), CartLine(2, 0, 1, False)], bal(5000))
    assert (split.points_used, split.cash_minor, split.order_total_minor) == (0, 0, 0)
    assert split.binding_rule == "none"
    assert all(a.points == 0 and a.cash_minor == 0 for a in split.lines)


def test_empty_balance() -> None:
    split = optimize_cart(P, [line(150)], PointsBalance())
    assert split.points_used == 0 and split.binding_rule == "balance"
    assert split.cash_minor == 15000


def test_full_share_can_pay_the_whole_order() -> None:
    prog = parse_programme(
        {"burning": {"max_order_share": 1.0, "min_points_step": 1, "deduction_caps": []}}
    )
    split = optimize_cart(prog, [CartLine(1, 1234, 1, True)], bal(10**6))
    assert split.points_used == 1234 and split.cash_minor == 0
    assert split.binding_rule == "eligibility"


def test_empty_tier_table_means_no_tiered_cap() -> None:
    prog = parse_programme({"burning": {"deduction_caps": []}})
    split = optimize_cart(prog, [line(80)], bal(5000))
    assert split.points_used == 4000 and split.binding_rule == "share_cap"


def test_share_is_the_decimal_the_rules_wrote() -> None:
    # 0.3 as a binary float is just below 3/10; the cap on 10.00 must still be 3.00, not 2.99
    prog = parse_programme(
        {"burning": {"max_order_share": 0.3, "min_points_step": 1, "deduction_caps": []}}
    )
    split = optimize_cart(prog, [CartLine(1, 1000, 1, True)], bal(10**6))
    assert split.points_used == 300 and split.binding_rule == "share_cap"


def test_points_worth_more_than_a_minor_unit_use_whole_minor_quanta() -> None:
    # 30 points per unit of 100 minor: 3 points = 10 minor is the smallest whole-money amount
    prog = parse_programme(
        {"burning": {"points_per_unit": 30, "min_points_step": 10, "deduction_caps": []}}
    )
    split = optimize_cart(prog, [CartLine(1, 1000, 1, True)], bal(10**6))
    # share cap 5.00 = 150 points; steps of lcm(10, 3) = 30 points = 1.00
    assert split.points_used == 150 and split.points_value_minor == 500
    assert split.binding_rule == "share_cap"


def test_a_line_is_never_paid_beyond_its_own_total() -> None:
    # 1 point = 10 minor units: lines of 0.09 cannot take a whole point, though a proportional
    # share would hand one of them the largest remainder
    prog = parse_programme(
        {
            "currency": {"minor_per_unit": 1000},
            "burning": {
                "points_per_unit": 100,
                "min_points_step": 1,
                "max_order_share": 1.0,
                "deduction_caps": [],
            },
        }
    )
    lines = [CartLine(1, 25, 1, True), CartLine(2, 9, 1, True), CartLine(3, 9, 1, True)]
    split = optimize_cart(prog, lines, bal(100))
    assert split.points_used == 2 and split.binding_rule == "eligibility"
    assert [(a.points, a.points_value_minor, a.cash_minor) for a in split.lines] == [
        (2, 20, 5),
        (0, 0, 9),
        (0, 0, 9),
    ]


# ------------------------------------------------------------------ FACTS.md: peers' bugs


def test_stacked_caps_never_exceed_the_smallest() -> None:
    # each of balance (9,000), share cap (20.00 of 40.00 eligible = 2,000) and the tier table
    # (3,000 on 250.00) would allow something; the result is the smallest, not a sum or the last
    lines = [line(40), line(210, eligible=False, item=2)]
    split = optimize_cart(P, lines, bal(4000, 5000))
    assert split.points_used == 2000 and split.binding_rule == "share_cap"
    # tier smaller than share and balance
    split = optimize_cart(P, [line(150)], bal(4000, 5000))
    assert split.points_used == 1000 and split.binding_rule == "tiered_cap"
    # points are deducted once: the lines' deductions are the order's, not in addition to it
    assert sum(a.points_value_minor for a in split.lines) == split.points_value_minor
    assert split.cash_minor == split.order_total_minor - split.points_value_minor


def test_points_are_ints_and_cash_is_never_negative() -> None:
    prog = parse_programme({"burning": {"max_order_share": 1.0, "deduction_caps": []}})
    split = optimize_cart(prog, [CartLine(1, 1, 1, True), CartLine(2, 99, 1, True)], bal(10**9))
    for value in (split.points_used, split.cash_minor, split.points_value_minor):
        assert type(value) is int
    for alloc in split.lines:
        assert type(alloc.points) is int and type(alloc.cash_minor) is int
        assert alloc.cash_minor >= 0
    assert all(type(p) is int for _, p in split.buckets_used)
    assert split.cash_minor == 0


# ------------------------------------------------------------------ expiry buckets (FIFO)


def test_points_come_from_the_earliest_expiring_buckets() -> None:
    late, soon, mid = T0 + dt.timedelta(days=300), T0, T0 + dt.timedelta(days=40)
    balance = PointsBalance(((late, 5000), (soon, 400), (mid, 450)))
    split = optimize_cart(P, [line(150)], balance)
    assert split.points_used == 1000
    assert split.buckets_used == ((soon, 400), (mid, 450), (late, 150))


def test_buckets_with_the_same_expiry_are_one_bucket() -> None:
    balance = PointsBalance(((T0, 300), (T0 + dt.timedelta(days=9), 900), (T0, 300)))
    split = optimize_cart(P, [line(150)], balance)
    assert split.buckets_used == ((T0, 600), (T0 + dt.timedelta(days=9), 400))


def test_balance_from_ledger_buckets() -> None:
    first = ledger.month_index(T0)
    balance = PointsBalance.from_bucket_row([0, 120, 0, 880], first)
    assert balance.buckets == (
        (ledger.expiry_instant(first + 1), 120),
        (ledger.expiry_instant(first + 3), 880),
    )
    assert balance.total == 1000
    assert PointsBalance.from_expiry_months({first + 3: 880, first + 1: 120}) == balance


def _s(when: dt.datetime) -> int:
    return int(when.timestamp())


def test_lots_reconciled_with_the_balance_now() -> None:
    soon, mid, late = T0 + dt.timedelta(days=10), T0 + dt.timedelta(days=40), T0 + dt.timedelta(
        days=300)
    lots = [(_s(late), 500), (_s(soon), 300), (_s(mid), 200)]
    # the same total: the lots as they are, earliest first
    assert PointsBalance.reconcile(lots, 1000, T0).buckets == ((soon, 300), (mid, 200),
                                                               (late, 500))
    # 350 spent since the snapshot: gone from the earliest lots, as every burn takes them
    assert PointsBalance.reconcile(lots, 650, T0).buckets == ((mid, 150), (late, 500))
    # 80 earned since (or never lapsing): one bucket of unknown lapse, burnt last
    grown = PointsBalance.reconcile(lots, 1080, T0)
    assert grown.buckets[-1] == (NO_EXPIRY, 80) and grown.total == 1080
    assert optimize_cart(P, [line(250)], grown).buckets_used[-1] == (late, 500)
    # a lot that lapsed since the snapshot is dropped; from the same snapshot its points too
    later = soon + dt.timedelta(days=1)
    assert PointsBalance.reconcile(lots, 1000, later).buckets == ((mid, 200), (late, 500),
                                                                  (NO_EXPIRY, 300))
    assert PointsBalance.reconcile(lots, 1000, later, same_snapshot=True).total == 700
    assert PointsBalance.reconcile([], 0, T0).buckets == ()
    with pytest.raises(InvalidArgument, match="points_balance"):
        PointsBalance.reconcile(lots, -1, T0)


@given(lots=st.lists(st.tuples(st.integers(-10**6, 10**6), st.integers(0, 5000)), max_size=8),
       balance=st.integers(0, 40_000))
def test_reconciled_lots_always_hold_the_balance(lots: list[tuple[int, int]],
                                                 balance: int) -> None:
    now = dt.datetime.fromtimestamp(0, dt.UTC)
    got = PointsBalance.reconcile(lots, balance, now)
    assert got.total == balance
    assert all(points > 0 and when > now for when, points in got.buckets)
    assert [w for w, _ in got.buckets] == sorted(w for w, _ in got.buckets)


# ------------------------------------------------------------------ advice


def test_advice_when_points_are_worth_more_elsewhere() -> None:
    # a point is worth 0.01 here; an item the member wants values points at 0.085
    split = optimize_cart(P, [line(150)], bal(5000), keep_value_per_point=0.085)
    assert split.keep_points and split.advice is not None
    assert split.points_used == 1000  # still the optimal split
    assert "1,000 points" in split.advice
    assert "85.00" in split.advice and "0.085" in split.advice
    assert "10.00" in split.advice and "0.01" in split.advice


@pytest.mark.parametrize("keep", [None, 0.0, 0.005, 0.01])
def test_no_advice_when_points_are_worth_as_much_here(keep: float | None) -> None:
    split = optimize_cart(P, [line(150)], bal(5000), keep_value_per_point=keep)
    assert not split.keep_points and split.advice is None


def test_no_advice_when_no_points_would_be_used() -> None:
    split = optimize_cart(P, [line(80)], bal(5000), keep_value_per_point=0.5)
    assert not split.keep_points and split.advice is None


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("lines", "balance", "field"),
    [
        ([], bal(1), "lines"),
        ([line(1)] * (MAX_LINES + 1), bal(1), "lines"),
        ([line(1), line(1), CartLine(3, 100, 0, True)], bal(1), "lines[2].quantity"),
        ([CartLine(3, -1, 1, True)], bal(1), "lines[0].unit_price_minor"),
        ([line(1), CartLine(-3, 100, 1, True)], bal(1), "lines[1].item_id"),
        ([CartLine(0, 100, 1, True)], bal(1), "lines[0].item_id"),  # ids start at 1
        ([CartLine(3, 1.5, 1, True)], bal(1), "lines[0].unit_price_minor"),  # type: ignore[arg-type]
        ([CartLine(3, 100, True, True)], bal(1), "lines[0].quantity"),
        ([line(1)], bal(10, -1), "balance.buckets[1].points"),
        ([line(1)], PointsBalance(((dt.datetime(2026, 1, 1), 5),)), "balance.buckets[0].expiry"),
    ],
)
def test_invalid_input_names_the_field(lines: Any, balance: PointsBalance, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        optimize_cart(P, lines, balance)
    assert err.value.field == field


def test_the_line_limit_itself_is_valid() -> None:
    assert optimize_cart(P, [line(1)] * MAX_LINES, bal(0)).order_total_minor == MAX_LINES * UNIT


@pytest.mark.parametrize("keep", [-0.1, math.nan, math.inf])
def test_invalid_keep_value(keep: float) -> None:
    with pytest.raises(InvalidArgument) as err:
        optimize_cart(P, [line(150)], bal(5000), keep_value_per_point=keep)
    assert err.value.field == "keep_value_per_point"


# ------------------------------------------------------------------ properties


@st.composite
def programmes(draw: st.DrawFn) -> Programme:
    """Random but valid burning rules (and currency), through the real validator."""
    n_caps = draw(st.integers(0, 3))
    mins = sorted(draw(st.sets(st.integers(0, 300), min_size=n_caps, max_size=n_caps)))
    # small tiers bind often; large ones leave the share cap and the balance to bind
    cap_points = st.integers(0, 4000) | st.integers(0, 10**6)
    maxes = sorted(draw(st.lists(cap_points, min_size=n_caps, max_size=n_caps)))
    share = draw(st.decimals(Decimal("0.01"), Decimal("1"), places=2))
    return parse_programme(
        {
            "currency": {"minor_per_unit": draw(st.sampled_from([1, 10, 50, 100, 1000]))},
            "burning": {
                "points_per_unit": draw(st.sampled_from([1, 3, 30, 100, 250, 1000])),
                "min_points_step": draw(st.sampled_from([1, 5, 10, 50, 100, 300])),
                "max_order_share": float(share),
                "deduction_caps": [
                    {"min_order_units": a, "max_points": b}
                    for a, b in zip(mins, maxes, strict=True)
                ],
            },
        }
    )


cart_lines = st.lists(
    st.builds(
        CartLine,
        item_id=st.integers(1, 10**6),
        unit_price_minor=st.integers(1, 3000) | st.integers(0, 30000),
        quantity=st.integers(1, 5),
        points_eligible=st.booleans(),
    ),
    min_size=1,
    max_size=6,
)
balances = st.lists(
    st.tuples(st.integers(0, 400).map(lambda d: T0 + dt.timedelta(days=d)), st.integers(0, 2500)),
    max_size=5,
).map(lambda b: PointsBalance(tuple(b)))


def check_invariants(
    prog: Programme, lines: list[CartLine], balance: PointsBalance, split: CartSplit
) -> None:
    m, p = prog.currency.minor_per_unit, prog.burning.points_per_unit
    assert split.points_value_minor + split.cash_minor == split.order_total_minor
    assert split.order_total_minor == sum(ln.unit_price_minor * ln.quantity for ln in lines)
    assert split.points_value_minor * p == split.points_used * m  # exact conversion
    assert split.cash_minor >= 0
    assert 0 <= split.points_used <= balance.total
    assert split.points_used % prog.burning.min_points_step == 0
    assert split.binding_rule in BINDING_RULES
    eligible = sum(ln.unit_price_minor * ln.quantity for ln in lines if ln.points_eligible)
    share = Decimal(repr(prog.burning.max_order_share))
    assert split.points_value_minor <= (share * eligible).to_integral_value(ROUND_FLOOR)
    assert split.points_value_minor <= eligible
    assert split.points_used <= tier_limit(prog, split.order_total_minor)
    # lines
    assert len(split.lines) == len(lines)
    assert sum(a.points for a in split.lines) == split.points_used
    assert sum(a.points_value_minor for a in split.lines) == split.points_value_minor
    assert sum(a.cash_minor for a in split.lines) == split.cash_minor
    for ln, a in zip(lines, split.lines, strict=True):
        assert a.item_id == ln.item_id
        assert a.line_total_minor == ln.unit_price_minor * ln.quantity
        assert a.points_value_minor + a.cash_minor == a.line_total_minor
        assert 0 <= a.points_value_minor <= a.line_total_minor
        assert a.points_value_minor * p == a.points * m
        if not ln.points_eligible:
            assert a.points == 0
    # buckets: earliest first, strictly; sums match; never more than a bucket held
    used = split.buckets_used
    assert [e for e, _ in used] == sorted({e for e, _ in used})
    assert sum(n for _, n in used) == split.points_used
    held: dict[dt.datetime, int] = {}
    for e, n in balance.buckets:
        held[e] = held.get(e, 0) + n
    for i, (e, n) in enumerate(used):
        assert 0 < n <= held[e]
        if i < len(used) - 1:
            assert n == held[e]  # every bucket but the last one used is emptied
    # nothing expiring before the last bucket used is left behind
    taken = dict(used)
    if used:
        assert all(taken.get(e, 0) == n for e, n in held.items() if e < used[-1][0])
    for v in (split.points_used, split.cash_minor, split.points_value_minor):
        assert type(v) is int


def tier_limit(prog: Programme, order_total_minor: int) -> float:
    caps = prog.burning.deduction_caps
    if not caps:
        return math.inf
    unit = prog.currency.minor_per_unit
    rows = [c for c in caps if c.min_order_units * unit <= order_total_minor]
    return max((c.max_points for c in rows), default=0)


def rules(prog: Programme, lines: list[CartLine], balance: PointsBalance) -> Callable[[int], bool]:
    """The rules, written out independently of the optimiser: is this points amount allowed?"""
    m, p = prog.currency.minor_per_unit, prog.burning.points_per_unit
    step = prog.burning.min_points_step
    totals = [ln.unit_price_minor * ln.quantity for ln in lines]
    eligible = [t for ln, t in zip(lines, totals, strict=True) if ln.points_eligible]
    share = Decimal(repr(prog.burning.max_order_share))
    share_cap = (share * sum(eligible)).to_integral_value(ROUND_FLOOR)
    tier = tier_limit(prog, sum(totals))
    # the value must split over eligible lines in whole points worth whole minor units, each
    # line at most its own total: fill each line with the smallest whole-money amount
    chunk_minor = m // math.gcd(m, p)
    payable = sum(t // chunk_minor * chunk_minor for t in eligible)

    def allowed(points: int) -> bool:
        if points < 0 or points % step or points > balance.total or points > tier:
            return False
        if points * m % p:  # the points must be worth a whole number of minor units
            return False
        value = points * m // p
        return value <= share_cap and value <= sum(eligible) and value <= payable

    return allowed


@settings(max_examples=300, deadline=None)
@given(prog=programmes(), lines=cart_lines, balance=balances)
def test_invariants_hold_for_random_carts_and_rules(
    prog: Programme, lines: list[CartLine], balance: PointsBalance
) -> None:
    check_invariants(prog, lines, balance, optimize_cart(prog, lines, balance))


@given(lines=cart_lines, balance=balances)
def test_invariants_hold_with_the_default_rules(
    lines: list[CartLine], balance: PointsBalance
) -> None:
    check_invariants(P, lines, balance, optimize_cart(P, lines, balance))


@settings(max_examples=300, deadline=None)
@given(prog=programmes(), lines=cart_lines, balance=balances)
def test_optimal_against_brute_force(
    prog: Programme, lines: list[CartLine], balance: PointsBalance
) -> None:
    split = optimize_cart(prog, lines, balance)
    step = prog.burning.min_points_step
    allowed = rules(prog, lines, balance)
    best = max(pts for pts in range(0, balance.total + 1, step) if allowed(pts))
    assert split.points_used == best


@settings(max_examples=200, deadline=None)
@given(prog=programmes(), lines=cart_lines, balance=balances)
def test_binding_rule_explains_the_limit(
    prog: Programme, lines: list[CartLine], balance: PointsBalance
) -> None:
    split = optimize_cart(prog, lines, balance)
    m, p = prog.currency.minor_per_unit, prog.burning.points_per_unit
    eligible = sum(ln.unit_price_minor * ln.quantity for ln in lines if ln.points_eligible)
    rule = split.binding_rule
    if rule == "none":
        assert split.order_total_minor == 0
    elif rule == "balance":
        assert split.points_used == balance.total
    elif rule == "tiered_cap":
        assert split.points_used == tier_limit(prog, split.order_total_minor)
    elif rule == "eligibility":
        # every eligible line is paid by points as far as whole-money amounts go
        chunk = m // math.gcd(m, p)
        assert split.points_value_minor == sum(
            a.line_total_minor // chunk * chunk
            for ln, a in zip(lines, split.lines, strict=True)
            if ln.points_eligible
        )
    elif rule == "share_cap":
        share = Decimal(repr(prog.burning.max_order_share))
        cap = (share * eligible).to_integral_value(ROUND_FLOOR)
        # the next whole-money amount of points would be worth more than the share allows
        assert split.points_value_minor + m // math.gcd(m, p) > cap
    else:  # min_step: a limit would allow more points, but not a whole further step
        assert rule == "min_step"
        assert not rules(prog, lines, balance)(split.points_used + prog.burning.min_points_step)


@given(
    keep=st.floats(0, 1, allow_nan=False),
    lines=cart_lines,
    balance=balances,
)
def test_advice_flag_follows_the_value_comparison(
    keep: float, lines: list[CartLine], balance: PointsBalance
) -> None:
    plain = optimize_cart(P, lines, balance)
    split = optimize_cart(P, lines, balance, keep_value_per_point=keep)
    # the split itself does not change with the advice
    assert (split.points_used, split.lines, split.buckets_used) == (
        plain.points_used,
        plain.lines,
        plain.buckets_used,
    )
    worth_more = Decimal(repr(keep)) > Decimal(1) / P.burning.points_per_unit
    assert split.keep_points == (worth_more and split.points_used > 0)
    assert (split.advice is not None) == split.keep_points


@given(data=st.data())
def test_allocation_is_proportional_largest_remainder(data: st.DataObject) -> None:
    prog = parse_programme(
        {"burning": {"max_order_share": 1.0, "min_points_step": 1, "deduction_caps": []}}
    )
    lines = data.draw(cart_lines)
    balance = data.draw(balances)
    split = optimize_cart(prog, lines, balance)
    eligible = [
        a.line_total_minor if ln.points_eligible else 0
        for ln, a in zip(lines, split.lines, strict=True)
    ]
    total = sum(eligible)
    if not total:
        return
    for t, a in zip(eligible, split.lines, strict=True):
        quota = Decimal(split.points_used * t) / total
        assert math.floor(quota) <= a.points <= math.ceil(quota)


@given(
    share=st.decimals(Decimal("0.01"), Decimal("1"), places=2),
    hundreds=st.integers(1, 10**6),
    lines=cart_lines,
)
def test_share_cap_is_exact(share: Decimal, hundreds: int, lines: list[CartLine]) -> None:
    prog = parse_programme(
        {"burning": {"max_order_share": float(share), "min_points_step": 1, "deduction_caps": []}}
    )
    # a subtotal in whole hundreds makes share × subtotal whole: the case binary floats get wrong
    lines = [CartLine(1, 100 * hundreds, 1, True), *lines]
    split = optimize_cart(prog, lines, bal(10**12))
    eligible = sum(ln.unit_price_minor * ln.quantity for ln in lines if ln.points_eligible)
    # 1 point = 1 minor unit: the points are exactly the share of the eligible subtotal, floored
    assert split.points_used == (share * eligible).to_integral_value(ROUND_FLOOR)


@given(
    prices=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    balance=balances,
)
def test_invariants_when_a_point_is_worth_several_minor_units(
    prices: list[int], balance: PointsBalance
) -> None:
    # small lines beside a whole-money amount of 10 minor units: the per-line limit is real
    prog = parse_programme(
        {
            "currency": {"minor_per_unit": 1000},
            "burning": {
                "points_per_unit": 100,
                "min_points_step": 1,
                "max_order_share": 1.0,
                "deduction_caps": [],
            },
        }
    )
    lines = [CartLine(i, price, 1, True) for i, price in enumerate(prices, start=1)]
    split = optimize_cart(prog, lines, balance)
    check_invariants(prog, lines, balance, split)
    assert split.points_used == min(balance.total, sum(price // 10 for price in prices))
