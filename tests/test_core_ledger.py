"""Ledger arithmetic: FIFO-by-expiry burning, earning by the rules, tiers (property-based)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recsvc.config import load_programme
from recsvc.core import ledger

P = load_programme()

buckets_st = arrays(np.int64, st.integers(1, 12), elements=st.integers(0, 5000))


@given(buckets=buckets_st, data=st.data())
def test_burn_takes_from_the_earliest_expiry_first(buckets: np.ndarray, data) -> None:
    amount = data.draw(st.integers(0, int(buckets.sum())))
    left, taken = ledger.burn_fifo(buckets, amount)
    assert taken.sum() == amount
    assert np.all(left >= 0) and np.all(taken >= 0)
    assert np.array_equal(left + taken, buckets)
    # FIFO: once a bucket keeps points, no later bucket was touched
    kept = np.flatnonzero(left > 0)
    if len(kept):
        assert taken[kept[0] + 1 :].sum() == 0


@given(
    mat=arrays(np.int64, st.tuples(st.integers(1, 8), st.just(6)), elements=st.integers(0, 5000)),
    seed=st.integers(0, 99),
)
def test_burn_on_many_members_equals_burn_on_each(mat: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    amounts = np.array([rng.integers(0, r.sum() + 1) for r in mat])
    left, taken = ledger.burn_fifo(mat, amounts)
    for i, row in enumerate(mat):
        one_left, one_taken = ledger.burn_fifo(row, int(amounts[i]))
        assert np.array_equal(left[i], one_left) and np.array_equal(taken[i], one_taken)


def test_burn_never_goes_negative() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        ledger.burn_fifo(np.array([10, 5]), 16)
    with pytest.raises(ValueError, match=">= 0"):
        ledger.burn_fifo(np.array([10, 5]), -1)


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["earn", "burn", "expire"]), st.integers(0, 5), st.integers(1, 3000)
        ),
        max_size=60,
    )
)
def test_balance_equals_the_sum_of_the_ledger(events) -> None:
    """Replaying earn/burn/expire events keeps balance = sum of entries, never negative."""
    buckets = np.zeros(6, dtype=np.int64)
    entries: list[int] = []
    for kind, col, amount in events:
        if kind == "earn":
            buckets[col] += amount
            entries.append(amount)
        elif kind == "burn":
            take = min(amount, int(buckets.sum()))
            buckets, _ = ledger.burn_fifo(buckets, take)
            entries.append(-take)
        else:  # the earliest bucket lapses
            first = int(buckets[0])
            buckets = np.r_[buckets[1:], 0]
            entries.append(-first)
        assert buckets.sum() == sum(entries) >= 0


def test_points_earned_by_the_rules() -> None:
    # 1 point per unit, rounded down; platinum-style 1.5x tier; +50 % category; double day
    assert ledger.points_earned(P, 12_345, 1.0) == 123
    assert ledger.points_earned(P, 9_999, 1.5) == 149  # floor(149.985)
    assert ledger.points_earned(P, 10_000, 1.0, 1.5) == 150
    assert ledger.points_earned(P, 10_000, 1.2, 1.0, 2.0) == 240
    assert ledger.points_earned(P, 7_000, 1.0, 1.0) == 70  # no float slip to 69
    assert ledger.points_earned(P, 0, 1.5) == 0
    assert ledger.points_earned(P, -500, 1.0) == 0
    arr = ledger.points_earned(P, np.array([100, 250, 99]), np.array([1.0, 1.2, 1.5]))
    assert arr.tolist() == [1, 3, 1]


@given(
    amount=st.integers(0, 10**9),
    tier=st.sampled_from([1.0, 1.2, 1.5]),
    cat=st.sampled_from([1.0, 1.2, 1.5]),
    camp=st.sampled_from([1.0, 2.0]),
)
def test_points_earned_is_exact_floor(amount, tier, cat, camp) -> None:
    from fractions import Fraction

    exact = Fraction(amount, 100) * Fraction(str(tier)) * Fraction(str(cat)) * Fraction(str(camp))
    assert ledger.points_earned(P, amount, tier, cat, camp) == int(exact)


def test_tiers_campaigns_categories_and_expiry() -> None:
    assert ledger.tier_for_spend(P, 0) == 0
    assert ledger.tier_for_spend(P, 499_999) == 0
    assert ledger.tier_for_spend(P, 500_000) == 1
    assert ledger.tier_for_spend(P, np.array([0, 2_000_000, 10**9])).tolist() == [0, 2, 2]
    assert ledger.campaign_multiplier(P, dt.date(2025, 11, 11)) == 2.0
    assert ledger.campaign_multiplier(P, dt.date(2025, 11, 12)) == 1.0
    assert ledger.category_multiplier(P, "beauty") == 1.5
    assert ledger.category_multiplier(P, "books") == 1.0
    assert ledger.expiry_months_for_tier(P, "diamond") == 24
    assert ledger.expiry_months_for_tier(P, "silver") == 12
    earned = ledger.month_index(dt.date(2025, 3, 17))
    assert ledger.expiry_instant(earned + 12) == dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    assert ledger.month_start(ledger.month_index(dt.date(1999, 12, 31))) == dt.datetime(
        1999, 12, 1, tzinfo=dt.UTC
    )
