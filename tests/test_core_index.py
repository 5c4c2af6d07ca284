"""The recommendation index of SPEC §2 with its worked examples."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from recsvc.config import load_programme
from recsvc.core import index as idx

RULES = load_programme().index


def test_value_coefficient_worked_example() -> None:
    assert idx.value_coefficient(80, 0.85, 800) == 0.085
    assert math.isclose(idx.value_coefficient(80, 0.85, 800, campaign_multiplier=2.0), 0.17)
    assert idx.value_coefficient(80, 0.85, 0) == 0.0


def test_demand_match_worked_example() -> None:
    assert idx.demand_match(375, 300) == 0.8
    assert idx.demand_match(300, 375) == 0.8
    assert idx.demand_match(0, 300) == 0.0
    assert idx.demand_match(375, 0) == 0.0


def test_recommendation_index_worked_example_is_the_correct_product() -> None:
    # the seed prints 0.0584; 0.12 × 0.8 × 0.8 × 0.8 is 0.06144
    assert math.isclose(idx.recommendation_index(0.12, 0.8, 0.8, 0.8), 0.06144, rel_tol=1e-12)
    assert idx.points_better(0.06144, RULES.hint_threshold)
    assert not idx.points_better(0.06, RULES.hint_threshold)  # strictly above the threshold


def test_vacuum_zone() -> None:
    assert idx.in_vacuum_zone(RULES, 0.029)
    assert not idx.in_vacuum_zone(RULES, 0.03)
    assert idx.in_vacuum_zone(RULES, np.array([0.01, 0.05])).tolist() == [True, False]


def test_behaviour_weight_bounds_and_multipliers() -> None:
    assert idx.behaviour_weight(RULES, 0, float("inf")) == RULES.behaviour_floor
    assert idx.behaviour_weight(RULES, 0, float("nan")) == RULES.behaviour_floor
    busy = idx.behaviour_weight(RULES, 30, 0)
    assert RULES.behaviour_floor < busy <= 1.0
    assert math.isclose(idx.behaviour_weight(RULES, 30, 0, young=True), busy * 1.2)
    assert idx.behaviour_weight(RULES, 3, 10) > idx.behaviour_weight(RULES, 3, 100)


def test_a_high_spender_reaches_the_line_in_any_currency_and_unknown_is_not() -> None:
    line = RULES.high_spender_min_aov_units  # units of the currency
    assert idx.high_spender(RULES, line * 100, 100) is True
    assert idx.high_spender(RULES, line * 100 - 1, 100) is False
    assert idx.high_spender(RULES, line * 1000, 1000) is True  # three-decimal currencies
    assert idx.high_spender(RULES, line * 100, 1000) is False
    assert idx.high_spender(RULES, math.nan, 100) is False
    got = idx.high_spender(RULES, np.array([line * 100, line * 100 - 1, np.nan]), 100)
    assert got.tolist() == [True, False, False]


def test_discount_coefficient_for_high_spenders() -> None:
    assert idx.discount_coefficient(RULES, 0.8) == 0.8
    assert math.isclose(idx.discount_coefficient(RULES, 1.0, high_spender=True), 0.9)


@given(
    price=st.floats(1, 10_000),
    disc=st.floats(0.1, 1.0),
    pts=st.integers(1, 100_000),
    bal=st.integers(0, 100_000),
    orders=st.integers(0, 50),
    days=st.floats(0, 1000),
)
def test_factors_vectorised_equal_scalar(price, disc, pts, bal, orders, days) -> None:
    one = idx.index_factors(
        RULES,
        market_price=price,
        perceived_discount=disc,
        points_price=pts,
        item_discount=1.0,
        balance=bal,
        orders_90d=orders,
        days_since_last_order=days,
    )
    many = idx.index_factors(
        RULES,
        market_price=np.array([price, price]),
        perceived_discount=np.array([disc, disc]),
        points_price=np.array([pts, pts]),
        item_discount=np.ones(2),
        balance=np.array([bal, bal]),
        orders_90d=np.array([orders, orders]),
        days_since_last_order=np.array([days, days]),
    )
    assert many.recommendation_index[0] == one.recommendation_index
    assert 0.0 <= one.demand_match <= 1.0
    expected = (
        one.value_coefficient * one.demand_match * one.behaviour_weight * one.discount_coefficient
    )
    assert math.isclose(one.recommendation_index, expected)
