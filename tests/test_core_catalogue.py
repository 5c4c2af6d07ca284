"""The catalogue under stock: alternates, and every inventory rule, with numbers worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.config import Programme, load_programme, parse_programme
from recsvc.core import catalogue as cat
from recsvc.core import index as idx
from recsvc.core import inventory as inv
from recsvc.core.redemption import Reason, hint

P = load_programme()
INV = P.inventory
SAME, CLASS, PRICE, HIGH = (Reason.SAME_CATEGORY, Reason.SAME_POINTS_CLASS,
                            Reason.SIMILAR_POINTS_PRICE, Reason.HIGH_PROPENSITY)

# id, category, points class, points price, stock. Item 1 is out of stock; the similarity of
# each other item to it, without a propensity, worked out from the stated weights:
#   2, 7  toys  base    800  0.40 + 0.20 + 0.25 (½ + ½·1)      = 0.85   -> 1.0
#   3     toys  growth 1600  0.40 + 0.25 (½ + ½·½)             = 0.5875 -> 0.69118
#   8     toys  luxury 3200  0.40 + 0.25 (½ + ½·0)             = 0.525  -> 0.61765
#   4     books base    790  out of stock: never an alternate
#   5     books base    400  0.20 + 0.25 (0 + ½·½) (mid band)  = 0.2625 -> 0.30882
#   6     home  luxury   50  0 (low band, 16 times cheaper)    = 0
ROWS = [(1, "toys", "base", 800, 0), (2, "toys", "base", 800, 5), (3, "toys", "growth", 1600, 3),
        (4, "books", "base", 790, 0), (5, "books", "base", 400, 2), (6, "home", "luxury", 50, 9),
        (7, "toys", "base", 800, 5), (8, "toys", "luxury", 3200, 1)]


def attributes(rows: list[tuple[int, str, str, int, int]] = ROWS) -> cat.Attributes:
    return cat.Attributes.build(*(np.array([r[k] for r in rows], dtype=object if k in (1, 2)
                                           else np.int64) for k in range(5)))


def test_gift_band_and_price_closeness() -> None:
    assert cat.gift_band(P, [0, 99, 100, 500, 501]).tolist() == [0, 0, 1, 1, 2]
    got = cat.price_closeness([800, 1600, 400, 3200, 0, 1131], 800)
    np.testing.assert_allclose(got, [1.0, 0.5, 0.5, 0.0, 0.0,
                                     1 - math.log(1131 / 800) / math.log(4)])


def test_gift_bands_are_worked_out_once_per_catalogue_and_thresholds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    items = attributes()
    calls: list[int] = []
    real = cat.gift_band

    def counted(programme: Programme, points_price: object) -> cat.I64:
        calls.append(1)
        return real(programme, points_price)

    monkeypatch.setattr(cat, "gift_band", counted)
    first = cat.alternates(P, items, [0])
    assert cat.alternates(P, items, [0, 3])[:1] == first and len(calls) == 1
    band = items.gift_band(P)
    assert band.tolist() == real(P, items.points_price).tolist() and not band.flags.writeable
    # other thresholds (another programme) get their own bands; a new load works them out anew
    wider = parse_programme({"gifts": {"low_below": 1000, "high_above": 2000}})
    assert items.gift_band(wider).tolist() == [0, 0, 1, 0, 0, 0, 0, 2]
    assert items.gift_band(P) is band and len(calls) == 2
    cat.alternates(P, attributes(), [0])
    assert len(calls) == 3


def test_alternates_most_similar_in_stock_first_with_reasons() -> None:
    (got,) = cat.alternates(P, attributes(), [0])
    assert [a.item_id for a in got] == [2, 7, 3]  # 2 and 7 tie: lower id first
    assert [a.similarity for a in got] == pytest.approx([1.0, 1.0, 0.5875 / 0.85])
    assert got[0].reasons == (SAME, CLASS, PRICE) and got[0].propensity is None
    assert got[2].reasons == (SAME, PRICE)  # same gift band (high), exactly twice the price
    assert got[2].category == "toys" and got[2].points_price == 1600 and got[2].position == 2
    (every,) = cat.alternates(P, attributes(), [0], count=10)
    assert [a.item_id for a in every] == [2, 7, 3, 8, 5, 6]  # never 1 itself, never 4
    assert [a.similarity for a in every][3:] == pytest.approx([0.525 / 0.85, 0.2625 / 0.85, 0])
    assert every[3].reasons == (SAME,)  # four times the price: not similar
    assert every[4].reasons == (CLASS,) and every[5].reasons == ()


def test_fewer_in_stock_items_fewer_alternates() -> None:
    rows = [(1, "toys", "base", 800, 0), (2, "toys", "base", 800, 1), (3, "toys", "base", 80, 0)]
    assert [[a.item_id for a in r] for r in cat.alternates(P, attributes(rows), [0, 1, 2])] \
        == [[2], [], [2]]


def test_the_members_propensity_counts_and_only_the_shortlist_is_scored() -> None:
    prob = np.array([0.5, 0.1, 0.0, 0.9, 1.0, 0.0, 0.9, 1.0])
    calls: list[list[int]] = []

    def scorer(positions: np.ndarray) -> np.ndarray:
        calls.append(positions.tolist())
        return prob[positions]

    (got,) = cat.alternates(P, attributes(), [0], propensity=scorer)
    # within 0.15 of the third best without propensity (item 3, 0.5875): items 2, 7, 3, 8
    assert calls == [[1, 2, 6, 7]]
    # 7: 0.85 + 0.15·0.9, 2: 0.85 + 0.015, 8: 0.525 + 0.15 climbs past 3: 0.5875 + 0
    assert [a.item_id for a in got] == [7, 2, 8]
    assert [a.similarity for a in got] == pytest.approx([0.985, 0.865, 0.675])
    assert [a.propensity for a in got] == [0.9, 0.1, 1.0]
    assert got[0].reasons == (SAME, CLASS, PRICE, HIGH) and HIGH not in got[1].reasons
    # a per-item array gives the same answer
    assert cat.alternates(P, attributes(), [0], propensity=prob) == [got]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1), count=st.integers(2, 5),
       with_model=st.booleans())
def test_alternates_are_never_out_of_stock_nor_the_item_itself(
        n: int, seed: int, count: int, with_model: bool) -> None:
    rng = np.random.default_rng(seed)
    rows = [(int(i), str(rng.choice(["a", "b", "c"])), str(rng.choice(["base", "luxury"])),
             int(rng.choice([0, 50, 100, 300, 800, 1600])), int(rng.integers(0, 3)))
            for i in rng.permutation(1000)[:n]]
    items = attributes(rows)
    prob = rng.random(n) if with_model else None
    targets = np.arange(n)
    got = cat.alternates(P, items, targets, propensity=prob, count=count)
    for t, alts in zip(targets, got, strict=True):
        in_stock_others = int(((items.stock > 0) & (np.arange(n) != t)).sum())
        assert len(alts) == min(count, in_stock_others)  # 2..count when enough are in stock
        assert all(items.stock[a.position] > 0 and a.position != t for a in alts)
        assert all(a.item_id == items.item_id[a.position] for a in alts)
        assert all(0.0 <= a.similarity <= 1.0 for a in alts)
        keys = [(-a.similarity, a.item_id) for a in alts]
        assert keys == sorted(keys)
    # the shortlist scored by the model loses nothing: the best `count` of a ranking of every
    # in-stock item (nothing left out) are the same
    everything = cat.alternates(P, items, targets, propensity=prob, count=n)
    assert got == [every[:count] for every in everything]
    # the load keeps each target's candidates: asked again, in another order, repeated and
    # mixed with new ones, the answers are those of a fresh load
    again = rng.permutation(np.r_[targets, targets[: n // 3]])
    fresh = cat.alternates(P, attributes(rows), again, propensity=prob, count=count)
    kept = attributes(rows)
    cat.alternates(P, kept, targets[: n // 3], propensity=prob, count=count)
    assert cat.alternates(P, kept, again, propensity=prob, count=count) == fresh
    assert cat.alternates(P, items, again, propensity=prob, count=count) == fresh


def test_forecast_is_the_mean_of_the_last_three_months_listed() -> None:
    redemptions = [[3, 6, 9], [0, 0, 12], [5, 5, 5], [4, 0, 2]]
    np.testing.assert_allclose(inv.forecast_monthly(redemptions, [5, 1, 2, 0]),
                               [6.0, 12.0, 5.0, 2.0])
    np.testing.assert_allclose(inv.forecast_monthly([[9, 3, 6, 9]], [12]), [6.0])


def test_safety_level_turnover_slow_movers_and_below_safety() -> None:
    np.testing.assert_allclose(inv.safety_level(INV, [6.0, 12.0, 0.0]), [1.2, 2.4, 0.0])
    np.testing.assert_allclose(inv.turnover_days([10, 0, 5, 4, 0], [6, 3, 0, 1, 0], 30),
                               [50.0, 0.0, math.inf, 120.0, 0.0])
    assert inv.slow_movers(INV, [90.0, 90.01, math.inf, 0.0]).tolist() == [False, True, True,
                                                                           False]
    assert inv.below_safety([1, 2, 0, 0], [1.2, 2.0, 0.0, 0.1]).tolist() == [True, False, False,
                                                                           True]


def test_delisting_needs_views_and_a_low_rate_in_each_of_the_last_three_months() -> None:
    viewers = [[100, 50, 20], [100, 50, 0], [100, 100, 100], [10, 10, 10], [0, 100, 100]]
    redeemers = [[4, 2, 0], [0, 0, 0], [4, 5, 4], [0, 0, 0], [0, 1, 1]]
    assert inv.delisting_candidates(INV, viewers, redeemers).tolist() == [
        True, False, False, True, False]  # no viewers in a month: no evidence; 5 % is not < 5 %
    # only the last delist_months months count
    assert inv.delisting_candidates(INV, [[10, 100, 100, 100]], [[9, 1, 1, 1]]).tolist() == [True]
    with pytest.raises(ValueError, match="3 months"):
        inv.delisting_candidates(INV, [[100, 100]], [[0, 0]])


def test_popular_is_the_top_quartile_of_views() -> None:
    assert inv.popular([0, 10, 20, 30, 40]).tolist() == [False, False, False, True, True]
    assert inv.popular([0, 10, 20, 30, 40], 0.5).tolist() == [False, False, True, True, True]
    assert not inv.popular([0, 0, 0]).any()


def test_price_cut_in_whole_steps_never_into_the_vacuum_zone() -> None:
    # price, market price (minor), perceived discount -> suggested price
    rows = [(800, 8000, 0.85, 700),  # 720 -> nearest step 700; value 68 / 700
            (850, 8000, 0.85, 800),  # 765 -> 800, still below 850
            (150, 8000, 0.85, 100),
            (110, 8000, 0.85, 100),  # 99 rounds to 100, below 110
            (100, 8000, 0.85, 0),  # nothing below 100 in whole steps: no suggestion
            (1000, 2000, 1.0, 600),  # value 0.02 (vacuum): 900 -> 600 lifts it to 0.0333
            (2000, 3000, 1.0, 1000),  # exactly 0.03 at 1,000 points: at the threshold is out
            (200, 100, 1.0, 0)]  # 1.00 of value can never reach 0.03 a point in whole steps
    price = np.array([r[0] for r in rows])
    market = np.array([r[1] for r in rows])
    disc = np.array([r[2] for r in rows])
    new, vc = inv.price_cut(P, price, market, disc)
    assert new.tolist() == [r[3] for r in rows]
    ok = new > 0
    np.testing.assert_allclose(vc[ok], market[ok] / 100 * disc[ok] / new[ok], atol=1e-12)
    assert np.isnan(vc[~ok]).all()
    assert (vc[ok] >= P.index.vacuum_threshold).all()
    assert vc[6] == 0.03 and not idx.in_vacuum_zone(P.index, vc[6])
    with pytest.raises(ValueError, match="cut"):
        inv.price_cut(P, price, market, disc, cut=0.0)


def test_price_cut_uses_the_campaign_multiplier_of_the_value_coefficient() -> None:
    doubled = parse_programme({"index": {"campaign_multiplier": 2.0}})
    new, vc = inv.price_cut(doubled, [1000], [2000], [1.0])
    # value 0.04 a point with the multiplier: out of the zone, so the plain 10 % cut
    assert new.tolist() == [900] and vc[0] == pytest.approx(20 * 2 / 900)


@settings(max_examples=200, deadline=None)
@given(price=st.integers(1, 20_000), market=st.integers(1, 200_000),
       disc=st.floats(0.05, 1.0), cut=st.floats(0.01, 0.9))
def test_a_suggested_price_is_lower_whole_steps_and_out_of_the_vacuum_zone(
        price: int, market: int, disc: float, cut: float) -> None:
    new, vc = inv.price_cut(P, [price], [market], [disc], cut)
    if new[0]:
        step = P.burning.min_points_step
        assert step <= new[0] < price and new[0] % step == 0
        assert vc[0] >= P.index.vacuum_threshold
        assert vc[0] >= idx.value_coefficient(market / 100, disc, price)


def history(**overrides: object) -> inv.ItemHistory:
    """Six items, twelve months listed, three months of history (the latest last):
    1  slow and below safety with stock left: forecast 10, safety 2, stock 1, mean stock 40
       -> 120 turnover days -> a cut from 800 to 700 points
    2  slow, plenty of stock: forecast 1, mean stock 10 -> 300 days
    3  out of stock and the most viewed per day in stock: alternates
    4  viewed 100 times a month, redeemed by 1 % of viewers: delisting candidate
    5, 6  in stock, the same category as 3
    """
    base = {
        "item_id": np.array([1, 2, 3, 4, 5, 6]),
        "category": np.array(["toys", "home", "books", "home", "books", "books"], dtype=object),
        "points_class": np.array(["base"] * 6, dtype=object),
        "points_price": np.array([800, 300, 500, 900, 450, 2000]),
        "market_price_minor": np.array([8000, 3000, 4000, 9000, 4000, 9000]),
        "perceived_discount": np.array([0.85, 1.0, 1.0, 1.0, 1.0, 1.0]),
        "stock": np.array([1, 10, 0, 50, 4, 4]),
        "mean_stock": np.array([40.0, 10.0, 2.0, 50.0, 4.0, 4.0]),
        "days_in_stock": np.array([90, 90, 30, 90, 90, 90]),
        "months_listed": np.full(6, 12),
        "redemptions": np.array([[10, 10, 10], [1, 1, 1], [3, 3, 0], [1, 1, 1], [3, 3, 3],
                                 [3, 3, 3]]),
        "views": np.array([[100, 100, 100], [30, 30, 30], [200, 100, 0], [100, 100, 100],
                           [20, 20, 20], [10, 10, 10]]),
        "viewers": np.array([[50, 50, 50], [20, 20, 20], [100, 50, 0], [100, 100, 100],
                             [10, 10, 10], [5, 5, 5]]),
        "redeemers": np.array([[10, 10, 10], [1, 1, 1], [3, 3, 0], [1, 1, 1], [3, 3, 3],
                               [3, 3, 3]]),
    }
    base.update(overrides)
    return inv.ItemHistory(**base)  # type: ignore[arg-type]


def test_assess_applies_every_rule() -> None:
    a = inv.assess(P, history())
    np.testing.assert_allclose(a.forecast, [10, 1, 2, 1, 3, 3])
    np.testing.assert_allclose(a.safety_level, [2, 0.2, 0.4, 0.2, 0.6, 0.6])
    np.testing.assert_allclose(a.turnover_days, [120, 300, 30, 1500, 40, 40])
    assert a.slow_mover.tolist() == [True, True, False, True, False, False]
    assert a.below_safety.tolist() == [True, False, True, False, False, False]
    assert a.out_of_stock.tolist() == [False, False, True, False, False, False]
    assert a.price_cut.tolist() == [True, False, False, False, False, False]
    assert a.suggested_points_price.tolist() == [700, 0, 0, 0, 0, 0]
    assert a.value_coefficient_after[0] == pytest.approx(68 / 700)
    assert np.isnan(a.value_coefficient_after[1:]).all()
    assert a.delist.tolist() == [False, False, False, True, False, False]
    # views per day in stock: 300/90, 90/90, 300/30, 300/90, 60/90, 30/90: the top quartile
    # (at least the 0.75 quantile, 10/3) is items 1, 3 and 4
    np.testing.assert_allclose(a.views_per_day, [10 / 3, 1, 10, 10 / 3, 2 / 3, 1 / 3])
    assert a.popular.tolist() == [True, False, True, True, False, False]
    assert a.popular_out_of_stock.tolist() == [False, False, True, False, False, False]
    assert [x.item_id for x in a.alternates[2]] == [5, 6, 2]  # books first, then the nearest
    assert all(a.alternates[i] == () for i in (0, 1, 3, 4, 5))
    np.testing.assert_allclose(a.redemption_rate, [0.2, 0.05, 0.04, 0.01, 0.3, 0.6])
    np.testing.assert_allclose(a.value_coefficient, [0.085, 0.1, 0.08, 0.1, 4000 / 45000,
                                                     0.045])


def test_no_cut_for_an_empty_shelf_or_a_fast_mover() -> None:
    # item 1 out of stock: below safety and slow, but nothing left to clear
    a = inv.assess(P, history(stock=np.array([0, 10, 0, 50, 4, 4])))
    assert a.below_safety[0] and a.slow_mover[0] and not a.price_cut[0]
    # item 1 turning over in 60 days: below safety, not slow, no cut
    a = inv.assess(P, history(mean_stock=np.array([20.0, 10, 2, 50, 4, 4])))
    assert a.turnover_days[0] == pytest.approx(60) and not a.slow_mover[0]
    assert not a.price_cut[0]


def test_an_out_of_stock_hint_says_so() -> None:
    common = {"market_price_minor": 8000, "perceived_discount": 0.85, "points_price": 800,
              "item_discount": 1.0, "balance": 1000, "orders_90d": 1,
              "days_since_last_order": 5}
    out = hint(P, **common, in_stock=False)
    assert not out.in_stock and out.reasons[-1] == Reason.OUT_OF_STOCK
    stocked = hint(P, **common)
    assert stocked.in_stock and Reason.OUT_OF_STOCK not in stocked.reasons
    assert out.factors == stocked.factors  # stock changes the answer's reasons, not its index
