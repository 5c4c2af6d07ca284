"""Ranking the catalogue for one member: order, filters, stock, propensity weight, unlocks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.config import Arm, load_programme
from recsvc.core import index as idx
from recsvc.core.ranking import Catalogue, Member, recommend, unlocks_in_reach
from recsvc.core.redemption import Reason

P = load_programme()
CONTROL = Arm(name="control", weight=1.0)


def catalogue(n: int = 6) -> Catalogue:
    return Catalogue(
        item_id=np.arange(100, 100 + n, dtype=np.int64),
        category=np.array(["toys", "books", "toys", "home", "books", "toys"][:n], dtype=object),
        points_price=np.array([800, 500, 2000, 300, 900, 600][:n], dtype=np.int64),
        market_price_minor=np.array([8000, 3000, 30000, 2000, 4000, 9000][:n], dtype=np.int64),
        perceived_discount=np.array([0.85, 0.9, 0.8, 1.0, 0.7, 0.9][:n]),
        discount_coefficient=np.array([1.0, 0.8, 1.0, 1.0, 1.0, 1.0][:n]),
        stock=np.array([5, 5, 5, 5, 5, 0][:n], dtype=np.int64),
    )


MEMBER = Member(balance=900, expiring_points=200, orders_90d=3, days_since_last_order=10)


def test_ranked_by_index_and_explained() -> None:
    items = catalogue()
    got = recommend(P, CONTROL, MEMBER, items, limit=10)
    ids = [o.item_id for o in got]
    assert 105 not in ids  # out of stock is never offered
    assert [o.rank for o in got] == list(range(1, len(got) + 1))
    assert [o.score for o in got] == sorted((o.score for o in got), reverse=True)
    f = idx.index_factors(P.index, market_price=80.0, perceived_discount=0.85, points_price=800,
                          item_discount=1.0, balance=900, orders_90d=3, days_since_last_order=10)
    first_800 = next(o for o in got if o.item_id == 100)
    assert first_800.score == f.recommendation_index  # the core's index, not a second formula
    big = next(o for o in got if o.item_id == 102)
    assert big.points_gap == 1100 and Reason.NOT_AFFORDABLE in big.reasons
    assert big.spend_to_close_gap_minor == 110_000
    assert big.points_cash[0].points == 900 and big.points_cash[0].cash_minor > 0
    assert all(o.expiring_points_used == 200 for o in got if o.points_cash)
    promo = next(o for o in got if o.item_id == 101)
    assert Reason.ON_PROMOTION in promo.reasons


def test_filters_and_limit() -> None:
    items = catalogue()
    assert {o.category for o in recommend(P, CONTROL, MEMBER, items, categories=["books"])} \
        == {"books"}
    assert all(o.points_price <= 600 for o in recommend(P, CONTROL, MEMBER, items,
                                                         max_points_price=600))
    assert all(o.points_gap == 0 for o in recommend(P, CONTROL, MEMBER, items,
                                                     affordable_only=True))
    assert len(recommend(P, CONTROL, MEMBER, items, limit=2)) == 2


def test_propensity_weight_reorders_and_zero_means_index_only() -> None:
    items = catalogue()
    propensity = np.array([0.01, 0.02, 0.9, 0.05, 0.03, 0.5])
    index_only = [o.item_id for o in recommend(P, CONTROL, MEMBER, items)]
    heavy = Arm(name="heavy", weight=1.0, propensity_weight=2.0)
    by_model = [o.item_id for o in recommend(P, heavy, MEMBER, items, propensity)]
    assert by_model[0] == 102  # the likely redemption rises to the top
    off = Arm(name="off", weight=1.0, propensity_weight=0.0)
    assert [o.item_id for o in recommend(P, off, MEMBER, items, propensity)] == index_only


@settings(max_examples=50)
@given(balance=st.integers(0, 10_000), seed=st.integers(0, 1000))
def test_any_catalogue_gives_stocked_sorted_options(balance: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    items = Catalogue(
        item_id=np.arange(n, dtype=np.int64),
        category=rng.choice(np.array(["a", "b", "c"], dtype=object), n),
        points_price=rng.integers(0, 5000, n), market_price_minor=rng.integers(0, 50_000, n),
        perceived_discount=rng.uniform(0.5, 1, n), discount_coefficient=rng.uniform(0.6, 1, n),
        stock=rng.integers(0, 3, n))
    got = recommend(P, CONTROL, Member(balance=balance), items, rng.uniform(0, 1, n), limit=15)
    assert len(got) <= 15
    assert all(items.stock[o.item_id] > 0 for o in got)
    assert [o.score for o in got] == sorted((o.score for o in got), reverse=True)
    assert all(o.points_gap == max(o.points_price - balance, 0) for o in got)


def test_unlocks_close_at_hand() -> None:
    near = unlocks_in_reach(P, Member(balance=1500))
    assert [(u.category, u.points_gap) for u in near] == [("kitchenware", 500)]
    assert near[0].spend_to_unlock_minor == 50_000
    assert [u.category for u in unlocks_in_reach(P, Member(balance=3000))] == ["furniture"]
    assert unlocks_in_reach(P, Member(balance=6000)) == []


def test_the_model_scores_only_the_shortlist_and_agrees_with_scoring_everything() -> None:
    rng = np.random.default_rng(5)
    n = 300
    items = Catalogue(
        item_id=np.arange(n, dtype=np.int64),
        category=rng.choice(np.array(["a", "b"], dtype=object), n),
        points_price=rng.integers(100, 5000, n), market_price_minor=rng.integers(100, 50_000, n),
        perceived_discount=rng.uniform(0.5, 1, n), discount_coefficient=rng.uniform(0.6, 1, n),
        stock=rng.integers(0, 3, n))
    everything = rng.uniform(0, 1, n)
    asked: list[np.ndarray] = []

    def model(positions: np.ndarray) -> np.ndarray:
        asked.append(positions)
        return everything[positions]

    heavy = Arm(name="heavy", weight=1.0, propensity_weight=1.0)
    lazy = recommend(P, heavy, MEMBER, items, model, limit=10, shortlist=50)
    assert len(asked) == 1 and len(asked[0]) == 50  # one model call, on 50 items
    # the shortlist is the index's best 50 in stock: with the whole catalogue shortlisted the
    # same scores come out wherever the top 10 lie inside those 50
    full = recommend(P, heavy, MEMBER, items, everything, limit=10, shortlist=n)
    inside = set(asked[0].tolist())
    assert [o.score for o in lazy] == [o.score for o in full if o.item_id in inside][:10]
    assert all(o.propensity == everything[o.item_id] for o in lazy)


def test_reasons_use_the_arms_threshold() -> None:
    items = catalogue()
    # the best index here is 0.058: below the programme's 0.06, above a lenient arm's 0.05
    assert all(Reason.INDEX_BELOW_THRESHOLD in o.reasons
               for o in recommend(P, CONTROL, MEMBER, items))
    lenient = Arm(name="lenient", weight=1.0, hint_threshold=0.05)
    got = recommend(P, lenient, MEMBER, items)
    assert Reason.INDEX_ABOVE_THRESHOLD in got[0].reasons
    assert Reason.INDEX_BELOW_THRESHOLD in got[1].reasons
