"""Hints, points + cash and spend-to-gap: exact integers, the SPEC's worked examples."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from recsvc.config import load_programme
from recsvc.core import redemption as rd

P = load_programme()


def test_points_plus_cash_pays_the_uncovered_share_of_the_price() -> None:
    # a 35.00 coffee at 1,400 points: 1,000 points leave 400/1,400 of 35.00 = 10.00 in cash
    assert rd.cash_for_remainder(1400, 3500, 1000) == 1000
    assert rd.cash_for_remainder(1400, 3500, 0) == 3500
    assert rd.cash_for_remainder(1400, 3500, 1400) == 0
    assert rd.cash_for_remainder(1400, 3500, 5000) == 0  # never negative
    assert rd.cash_for_remainder(3, 100, 1) == 67  # 66.67 rounds up: never under the price


@given(points_price=st.integers(1, 100_000), price=st.integers(0, 10_000_000),
       balance=st.integers(0, 200_000))
def test_options_never_undercharge_and_respect_the_balance(points_price, price, balance) -> None:
    options = rd.points_cash_options(P, points_price, price, balance)
    assert len(options) <= 4
    assert [o.points for o in options] == sorted((o.points for o in options), reverse=True)
    for o in options:
        assert 0 < o.points <= min(balance, points_price)
        assert o.points == points_price or o.points % P.burning.min_points_step == 0
        # cash covers at least the uncovered share of the price, exactly
        assert o.cash_minor * points_price >= (points_price - o.points) * price
        assert (o.cash_minor - 1) * points_price < (points_price - o.points) * price or \
            o.cash_minor == 0
    if balance >= points_price:
        assert options[0] == rd.PointsCash(points_price, 0)


def test_spend_to_earn_the_gap_is_exact() -> None:
    assert rd.spend_to_earn(P, 0) == 0
    assert rd.spend_to_earn(P, 75) == 7500  # 1 point per unit
    assert rd.spend_to_earn(P, 75, 1.5) == 5000  # diamond: 50 units earn 75 points
    assert rd.spend_to_earn(P, 100, 1.2) == 8400  # 84 units earn floor(100.8) = 100


@given(points=st.integers(1, 10**6), mult=st.sampled_from([1.0, 1.2, 1.5]))
def test_spend_to_earn_is_the_least_whole_unit_spend(points, mult) -> None:
    from recsvc.core import ledger

    spend = rd.spend_to_earn(P, points, mult)
    assert spend % 100 == 0
    assert ledger.points_earned(P, spend, mult) >= points
    assert ledger.points_earned(P, spend - 100, mult) < points


def test_hint_for_the_worked_example() -> None:
    # SPEC §2: 80.00 at a perceived 0.85 for 800 points -> 0.085 per point
    h = rd.hint(P, market_price_minor=8000, perceived_discount=0.85, points_price=800,
                item_discount=1.0, balance=640, orders_90d=3, days_since_last_order=5)
    assert h.factors.value_coefficient == 0.085
    assert h.factors.demand_match == 0.8
    assert math.isclose(h.factors.recommendation_index,
                        0.085 * 0.8 * h.factors.behaviour_weight * 1.0)
    assert not h.affordable and h.points_gap == 160
    assert h.spend_to_close_gap_minor == 16_000
    assert h.points_cash == rd.PointsCash(600, rd.cash_for_remainder(800, 8000, 600))
    assert rd.Reason.NOT_AFFORDABLE in h.reasons


def test_hint_threshold_vacuum_and_reasons() -> None:
    rich = dict(market_price_minor=20_000, perceived_discount=1.0, points_price=1000,
                item_discount=0.8, balance=1200, orders_90d=10, days_since_last_order=1)
    good = rd.hint(P, **rich, expiring_points=300, propensity=0.5)
    assert good.points_better and good.affordable and good.points_gap == 0
    assert good.points_cash == rd.PointsCash(1000, 0)
    assert {rd.Reason.INDEX_ABOVE_THRESHOLD, rd.Reason.USES_EXPIRING_POINTS,
            rd.Reason.HIGH_PROPENSITY, rd.Reason.ON_PROMOTION} <= set(good.reasons)
    # an experiment arm with a higher threshold changes the answer, not the factors
    strict = rd.hint(P, **rich, threshold=10.0)
    assert not strict.points_better and strict.factors == good.factors
    assert rd.Reason.INDEX_BELOW_THRESHOLD in strict.reasons
    poor = rd.hint(P, market_price_minor=1000, perceived_discount=0.5, points_price=1000,
                   item_discount=1.0, balance=5000, orders_90d=0, days_since_last_order=1e9,
                   cold_start=True)
    assert poor.vacuum and not poor.points_better
    assert {rd.Reason.VACUUM_ZONE, rd.Reason.COLD_START} <= set(poor.reasons)


@given(st.lists(st.tuples(
    st.integers(0, 50_000),  # market price, minor units
    st.floats(0.3, 1.2),  # perceived discount
    st.integers(-100, 20_000),  # points price
    st.sampled_from([0.5, 0.8, 0.95, 1.0])),  # the item's discount
    min_size=1, max_size=20),
    st.integers(0, 30_000), st.floats(0, 40), st.floats(0, 400), st.booleans(), st.booleans(),
    st.integers(0, 5_000), st.one_of(st.none(), st.floats(0, 1)), st.booleans())
def test_one_pair_in_plain_numbers_answers_as_the_columns_do(
        rows: list[tuple[int, float, int, float]], balance: int, orders: float, days: float,
        young: bool, high: bool, expiring: int, propensity: float | None, cold: bool) -> None:
    """The product page's one-item hint (plain numbers) and the batch's (numpy columns) are
    one formula: the same factors, flags, amounts and reasons, to the bit."""
    import numpy as np

    from recsvc.core import index as idx

    market, perceived, price, discount = (np.array(c) for c in zip(*rows, strict=True))
    stock = np.arange(len(rows)) % 3 > 0
    columns = idx.index_factors(
        P.index, market_price=market / P.currency.minor_per_unit, perceived_discount=perceived,
        points_price=price, item_discount=discount, balance=balance, orders_90d=orders,
        days_since_last_order=days, young=young, high_spender=high)
    many = rd.hints(P, columns, market_price_minor=market, points_price=price,
                    item_discount=discount, balance=balance, tier_multiplier=1.2,
                    expiring_points=expiring, cold_start=cold, in_stock=stock,
                    propensity=None if propensity is None else np.full(len(rows), propensity))
    for j, (m, pd, pp, d) in enumerate(rows):
        one = rd.hint(P, market_price_minor=m, perceived_discount=pd, points_price=pp,
                      item_discount=d, balance=balance, orders_90d=orders,
                      days_since_last_order=days, young=young, high_spender=high,
                      tier_multiplier=1.2, expiring_points=expiring, propensity=propensity,
                      cold_start=cold, in_stock=bool(stock[j]))
        assert one == many[j]
        # the hint's way to pay is the first of the points + cash options
        cash = rd.cash_price(m, d)
        options = rd.points_cash_options(P, pp, cash, balance)
        assert tuple(one.points_cash) == (tuple(options[0]) if options else (0, cash))
