"""The liability projection's arithmetic on cases small enough to work out by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recsvc.core import liability as li
from recsvc.core import liability_backtest as lb


def _one(lots: list[float], *, active: float = 1.0, earn: float = 0.0, share: float = 0.0,
         months: int = 4, lapse: int = 12, no_expiry: float = 0.0) -> li.Projection:
    return li.project(np.array([lots], dtype=float), np.array([no_expiry]),
                      np.full((1, months), active), np.array([earn]), np.array([share]),
                      np.array([lapse]), np.ones(months))


def test_one_lot_and_no_burning_all_lapses_in_its_month() -> None:
    p = _one([0.0, 0.0, 500.0])
    assert p.opening.tolist() == [500.0]
    assert p.expired[0].tolist() == [0.0, 0.0, 500.0, 0.0]
    assert p.redeemed[0].tolist() == [0.0] * 4
    assert p.outstanding[0].tolist() == [500.0, 500.0, 0.0, 0.0]


def test_full_burn_rate_leaves_nothing_to_expire() -> None:
    p = _one([300.0, 200.0], share=1.0)
    assert p.redeemed[0].tolist() == [500.0, 0.0, 0.0, 0.0]
    assert p.expired.sum() == 0.0
    assert p.outstanding[0].tolist() == [0.0] * 4


def test_burns_take_the_earliest_lapsing_lots_first() -> None:
    # held 100 (lapsing end of month 0) + 400 (end of month 2); 40 % of 500 = 200 is burnt in
    # month 0: all 100 of the first lot and 100 of the second, so nothing lapses in month 0.
    p = _one([100.0, 0.0, 400.0], share=0.4, months=3)
    assert p.redeemed[0, 0] == pytest.approx(200.0)
    assert p.expired[0, 0] == 0.0
    # month 1: 40 % of the 300 left; month 2: 40 % of 180, the other 108 lapse
    assert p.redeemed[0].tolist() == pytest.approx([200.0, 120.0, 72.0])
    assert p.expired[0].tolist() == pytest.approx([0.0, 0.0, 108.0])


def test_never_lapsing_points_are_burnt_last_and_never_expire() -> None:
    p = _one([100.0], no_expiry=100.0, share=0.5, months=2)
    assert p.redeemed[0].tolist() == pytest.approx([100.0, 50.0])
    assert p.expired.sum() == 0.0
    assert p.outstanding[0, -1] == pytest.approx(50.0)


def test_earned_points_lapse_after_the_expiry_period() -> None:
    p = _one([], earn=100.0, months=6, lapse=3)
    # earned in month 0 lapse at the end of month 3, those of month 1 at the end of month 4 ...
    assert p.earned[0].tolist() == [100.0] * 6
    assert p.expired[0].tolist() == [0.0, 0.0, 0.0, 100.0, 100.0, 100.0]
    assert p.outstanding[0].tolist() == [100.0, 200.0, 300.0, 300.0, 300.0, 300.0]


def test_points_earned_in_a_month_count_half_toward_its_burn() -> None:
    p = _one([0.0, 0.0, 200.0], earn=100.0, share=0.5, months=1)
    assert p.redeemed[0, 0] == pytest.approx(0.5 * (200.0 + 50.0))


def test_a_churned_member_neither_earns_nor_redeems() -> None:
    p = _one([50.0, 50.0], active=0.0, earn=1_000.0, share=1.0, months=3)
    assert p.earned.sum() == 0.0
    assert p.redeemed.sum() == 0.0
    assert p.expired[0].tolist() == [50.0, 50.0, 0.0]


def test_half_active_halves_earning_and_burning() -> None:
    p = _one([0.0, 0.0, 400.0], active=0.5, earn=100.0, share=0.5, months=1)
    assert p.earned[0, 0] == pytest.approx(50.0)
    assert p.redeemed[0, 0] == pytest.approx(0.5 * 0.5 * (400.0 + 25.0))


def test_a_partial_month_scales_the_rates() -> None:
    p = li.project(np.array([[0.0, 200.0]]), np.zeros(1), np.ones((1, 2)), np.array([90.0]),
                   np.array([0.5]), np.array([12]), np.array([1 / 3, 1.0]))
    assert p.earned[0].tolist() == pytest.approx([30.0, 90.0])
    assert p.redeemed[0, 0] == pytest.approx(0.5 / 3 * (200.0 + 15.0))


def test_points_are_conserved_every_month() -> None:
    rng = np.random.default_rng(1)
    n, h = 300, 14
    lots = rng.gamma(0.6, 300.0, (n, 20)) * (rng.random((n, 20)) < 0.4)
    p = li.project(lots, rng.gamma(0.3, 50.0, n), rng.random((n, h)),
                   rng.gamma(1.0, 120.0, n), rng.random(n), rng.choice([12, 24], n), np.ones(h))
    before = np.concatenate([p.opening[:, None], p.outstanding[:, :-1]], axis=1)
    np.testing.assert_allclose(before + p.earned, p.redeemed + p.expired + p.outstanding,
                               rtol=1e-12, atol=1e-9)
    assert (p.redeemed >= 0).all() and (p.expired >= -1e-9).all()
    assert (p.outstanding >= -1e-9).all()


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="row per member"):
        li.project(np.zeros((2, 3)), np.zeros(1), np.ones((1, 2)), np.zeros(1), np.zeros(1),
                   np.array([12]), np.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        _one([-1.0])


# --------------------------------------------------------------------------------------------
# Rates, activity, calendar.
# --------------------------------------------------------------------------------------------
def test_shrinkage_pulls_thin_histories_to_the_population_rate() -> None:
    num = np.array([0.0, 300.0, 2_000.0])
    den = np.array([0.0, 1.0, 20.0])
    pop = 2_300.0 / 21.0
    got = li.shrunk_rate(num, den, 2.0)
    assert got[0] == pytest.approx(pop)  # no history: the population's rate
    assert got[1] == pytest.approx((300.0 + 2 * pop) / 3.0)
    assert got[2] == pytest.approx((2_000.0 + 2 * pop) / 22.0)
    assert abs(got[2] - 100.0) < abs(got[1] - 300.0)  # a long history keeps its own rate
    assert li.shrunk_rate(num, den, 0.0).tolist() == pytest.approx([pop, 300.0, 100.0])


def test_estimate_rates_from_history() -> None:
    # member 0: 2 whole months, earns 100 a month, holds 1,000 at each start, burns 210 each
    # member 1: joined for half of the second month only, did nothing
    earned = np.array([[100.0, 100.0], [0.0, 0.0]])
    burned = np.array([[210.0, 210.0], [0.0, 0.0]])
    opening = np.array([[1_000.0, 890.0], [0.0, 0.0]])
    exposure = np.array([[1.0, 1.0], [0.0, 0.5]])
    r = li.estimate_rates(earned, burned, opening, exposure, np.ones(2), prior_months=0.0)
    assert r.earn_per_month.tolist() == pytest.approx([100.0, 0.0])
    held0 = (1_000.0 + 50.0) + (890.0 + 50.0)
    assert r.burn_share[0] == pytest.approx(420.0 / held0)
    assert r.population_earn == pytest.approx(200.0 / 2.5)
    assert r.population_burn == pytest.approx(420.0 / held0)
    # with a prior of 2 months the newcomer's half month counts for little
    shrunk = li.estimate_rates(earned, burned, opening, exposure, np.ones(2), prior_months=2.0)
    assert shrunk.earn_per_month[1] == pytest.approx(2 * 80.0 / 2.5)
    assert shrunk.burn_share[1] == pytest.approx(420.0 / held0)  # holds nothing: the prior


def test_alive_now_inverts_the_no_order_probability() -> None:
    # a customer ordering 3 times per 90 days misses a 90-day horizon with prob e^-3
    quiet = np.exp(-3.0)
    p = np.array([quiet, 1.0, 0.5 * quiet + 0.5, 0.0])
    a = li.alive_now(p, np.array([3 / 90, 3 / 90, 3 / 90, 0.0]), 90.0)
    assert a.tolist() == pytest.approx([1.0, 0.0, 0.5, 1.0])
    # a rare buyer (one order in 900 days) who did not order is still most likely a customer
    rare = li.alive_now(np.array([0.93]), np.array([1 / 900]), 90.0)
    assert rare[0] == pytest.approx(0.07 / (1 - np.exp(-0.1)))
    assert li.alive_now(np.array([0.2]), np.array([1.0]), 90.0)[0] == pytest.approx(0.8)


def test_customer_hazard_and_the_activity_curve() -> None:
    assert li.customer_hazard(np.array([0.5, 0.3]), np.array([1.0, 0.6])) == pytest.approx(0.5)
    assert li.customer_hazard(np.array([1.0]), np.array([0.5])) == 0.0  # no one comes back
    assert li.customer_hazard(np.zeros(2), np.zeros(2)) == 0.0
    a = li.active_probability(np.array([1.0, 0.5, 0.0]), 0.19, 90.0, np.array([0.0, 45.0, 90.0]))
    assert a[0].tolist() == pytest.approx([1.0, 0.9, 0.81])
    assert a[1].tolist() == pytest.approx([0.5, 0.45, 0.405])
    assert a[2].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        li.active_probability(np.ones(1), 1.0, 90.0, np.zeros(1))


def test_recency_churn_is_the_share_lost_by_bucket() -> None:
    nan = np.nan
    # at the cut-off: two recent buyers (one ordered again), three lapsed 100 days (none
    # did), one never-buyer who did
    at_cut = np.array([5.0, 20.0, 100.0, 120.0, 150.0, nan])
    after = np.array([True, False, False, False, False, True])
    now = np.array([10.0, 100.0, nan, 400.0])
    got = li.recency_churn(at_cut, after, now, edges=(30.0, 90.0, 365.0))
    # 400 days: a bucket nobody was in at the cut-off, so the overall share 4/6
    assert got.tolist() == pytest.approx([0.5, 1.0, 0.0, 4 / 6])


def _utc(year: int, month: int, day: int) -> dt.datetime:
    return dt.datetime(year, month, day, tzinfo=dt.UTC)


def test_forecast_months_from_a_month_start_and_from_inside_a_month() -> None:
    b = li.forecast_bounds(_utc(2025, 6, 1), 3)
    assert b == [_utc(2025, 6, 1), _utc(2025, 7, 1), _utc(2025, 8, 1), _utc(2025, 9, 1)]
    assert li.month_fractions(b).tolist() == [1.0, 1.0, 1.0]
    b = li.forecast_bounds(_utc(2025, 6, 21), 2)
    assert b == [_utc(2025, 6, 21), _utc(2025, 7, 1), _utc(2025, 8, 1)]
    assert li.month_fractions(b).tolist() == pytest.approx([1 / 3, 1.0])
    assert li.mid_days(b).tolist() == pytest.approx([5.0, 10.0 + 15.5])
    h = li.history_bounds(_utc(2025, 6, 21), 2)
    assert h == [_utc(2025, 4, 1), _utc(2025, 5, 1), _utc(2025, 6, 1), _utc(2025, 6, 21)]


# --------------------------------------------------------------------------------------------
# Bootstrap, money, backtest.
# --------------------------------------------------------------------------------------------
def _population(n: int, seed: int) -> li.Projection:
    rng = np.random.default_rng(seed)
    h = 6
    lots = rng.gamma(0.8, 400.0, (n, 12)) * (rng.random((n, 12)) < 0.5)
    return li.project(lots, np.zeros(n), np.full((n, h), 0.8), rng.gamma(1.0, 100.0, n),
                      rng.beta(1.0, 6.0, n), np.full(n, 12), np.ones(h))


def test_the_interval_holds_the_estimate_and_narrows_as_members_grow() -> None:
    width = []
    for n in (200, 5_000):
        p = _population(n, 4)
        bands = li.bootstrap(p, samples=200, level=0.9, seed=11)
        for name, band in bands.items():
            assert (band.low <= band.point + 1e-6).all() and (band.point <= band.high + 1e-6).all()
            assert band.total_low <= band.total <= band.total_high, name
            assert band.total == pytest.approx(
                p.quantity(name).sum() if name != "outstanding" else p.outstanding[:, -1].sum())
        red = bands["redeemed"]
        width.append((red.total_high - red.total_low) / red.total)
    assert width[1] < width[0] / 3  # relative width falls like 1/sqrt(members): ~5x here


def test_the_bootstrap_is_reproducible_with_its_seed() -> None:
    p = _population(100, 5)
    a = li.bootstrap(p, samples=50, level=0.9, seed=3)["expired"]
    b = li.bootstrap(p, samples=50, level=0.9, seed=3, max_cells=700)["expired"]
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.high, b.high)


def test_liability_in_minor_units_rounds_half_up_exactly() -> None:
    assert li.liability_minor(np.array([0, 1, 150, 1_234_567]), 100, 100).tolist() == [
        0, 1, 150, 1_234_567]
    # 1 unit = 100 minor for 1,000 points: 0.1 minor per point; 15 points = 1.5 -> 2
    assert li.liability_minor(np.array([14, 15, 16, 25]), 100, 1_000).tolist() == [1, 2, 2, 3]
    assert li.whole_points(np.array([0.5, 1.5, 2.4])).tolist() == [0, 2, 2]
    with pytest.raises(ValueError):
        li.liability_minor(np.array([-1]), 100, 100)


def test_backtest_errors() -> None:
    band = li.Band(point=np.array([100.0, 200.0, 300.0]), low=np.array([90.0, 150.0, 280.0]),
                   high=np.array([110.0, 250.0, 320.0]), total=600.0, total_low=0, total_high=0)
    err = lb.backtest_error("redeemed", band, np.array([80.0, 200.0]))
    assert err.months == 2
    assert err.mape == pytest.approx((20 / 80 + 0) / 2)
    assert err.total_forecast == 300.0 and err.total_actual == 280.0
    assert err.total_error == pytest.approx(20 / 280)
    assert err.inside == 1
    level = lb.backtest_error("outstanding", band, np.array([100.0, 400.0, 300.0]))
    assert level.total_forecast == 300.0 and level.total_actual == 300.0  # a level: the last
    with pytest.raises(ValueError):
        lb.backtest_error("redeemed", band, np.zeros(4))


def test_recency_churn_split_by_frequency_shrinks_cells_to_their_bucket() -> None:
    # one recency bucket (< 30 days) at the cut-off: four frequent buyers (3 orders) who all
    # ordered again, four occasional ones (1 order) who all stopped: the bucket's share is 1/2
    at_cut = np.full(8, 10.0)
    after = np.array([True] * 4 + [False] * 4)
    freq_cut = np.array([3.0] * 4 + [1.0] * 4)
    now = np.array([10.0, 10.0, 10.0])
    freq_now = np.array([3.0, 1.0, 5.0])
    got = li.recency_churn(at_cut, after, now, edges=(30.0,), frequency_at_cut=freq_cut,
                           frequency=freq_now, frequency_edges=(2.0, 4.0))
    k = li.CELL_PRIOR
    # cell (0 lost of 4) and (4 of 4) pulled to 1/2 by k members; 5 orders: an empty cell
    assert got.tolist() == pytest.approx([(0 + k / 2) / (4 + k), (4 + k / 2) / (4 + k), 0.5])
    # without the frequencies: the recency bucket alone
    assert li.recency_churn(at_cut, after, now, edges=(30.0,)).tolist() == [0.5] * 3


def test_fit_factor_solves_proportional_and_bounded_responses() -> None:
    assert lb.fit_factor(lambda f: 200.0 * f, 300.0) == pytest.approx(1.5)
    # a response that saturates at a balance of 100: 60·f capped at 100
    f = lb.fit_factor(lambda f: min(60.0 * f, 100.0) + 20.0 * f, 110.0, iterations=50)
    assert min(60.0 * f, 100.0) + 20.0 * f == pytest.approx(110.0)
    assert lb.fit_factor(lambda f: 10.0 * f, 1000.0) == lb.FACTOR_RANGE[1]  # clipped
    assert lb.fit_factor(lambda f: 0.0, 50.0) == 1.0  # nothing projected: no correction
    assert lb.fit_factor(lambda f: 10.0 * f, 0.0) == 1.0  # nothing happened: none either
    with pytest.raises(ValueError, match="limits"):
        lb.fit_factor(lambda f: f, 1.0, limits=(1.5, 2.0))


def test_calibrate_fits_earning_first_then_burning_on_a_projection() -> None:
    # one member holding 1,000 points, earning 100 a month, burning 10 % a month: 3 months
    def run(earn: float, burn: float) -> dict[str, float]:
        p = _one([], no_expiry=1000.0, earn=100.0 * earn, share=0.1 * burn, months=3)
        return {"earned": float(p.earned.sum()), "redeemed": float(p.redeemed.sum())}

    # what "happened": earning 120 a month and burning 15 % a month
    truth = _one([], no_expiry=1000.0, earn=120.0, share=0.15, months=3)
    actual = {"earned": float(truth.earned.sum()), "redeemed": float(truth.redeemed.sum())}
    cal = lb.calibrate(run, actual, ["2025-03-01"])
    assert cal.earn == pytest.approx(1.2)
    assert cal.burn == pytest.approx(1.5, rel=1e-4)  # six fixed-point steps
    assert cal.projected["earned"] == pytest.approx(300.0)
    assert lb.calibrate(run, actual, []) == lb.NO_CALIBRATION  # no origin: no correction
