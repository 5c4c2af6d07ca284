"""BG/NBD: the published CDNOW figure, formulas against direct integration, parameter recovery."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from btyd_checks import (
    assert_matches_forward_simulation,
    assert_recovers,
    assert_round_trips_through_json,
)
from recsvc.ml.btyd import BgNbd, simulate
from recsvc.ml.btyd_base import summarise_orders

CDNOW = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)  # Fader, Hardie & Lee (2005), table 2


def _by_quadrature(
    m: BgNbd, x: float, t_x: float, T: float, t: float, nodes: int = 600
) -> dict[str, float]:
    """The model's quantities straight from its definition, by 2-D Gauss–Legendre quadrature.

    Integrates over the prior of (λ, p) with the substitutions λ = v^(1/r) and p = u^(1/a),
    which absorb the prior's λ^(r−1) and p^(a−1) singularities at 0:
      f(λ) dλ = α^r e^(−αλ) / Γ(r+1) dv,   f(p) dp = (1−p)^(b−1) / (a·B(a, b)) du.
    An individual's likelihood is (1−p)^x λ^x e^(−λT) (alive at T) plus, when x > 0,
    p(1−p)^(x−1) λ^x e^(−λ t_x) (dropped after the last purchase); an alive customer makes
    (1 − e^(−λpt)) / p purchases in the next t on average, and buys at least once in the next t
    with probability 1 − e^(−λt) (the next purchase comes after an Exp(λ) wait, alive till then).
    """
    v_max = 4.0**m.r  # λ ≤ 4 per period holds all the mass for these parameters
    g, gw = np.polynomial.legendre.leggauss(nodes)
    v, wv = (g + 1) / 2 * v_max, gw / 2 * v_max
    u, wu = (g + 1) / 2, gw / 2
    lam = v[:, None] ** (1 / m.r)
    if m.a < 50:
        p = u[None, :] ** (1 / m.a)
        p_prior = (1 - p) ** (m.b - 1) / (m.a * math.exp(special.betaln(m.a, m.b)))
    else:  # a peaked prior (huge a and b): p itself over twelve standard deviations
        mean = m.a / (m.a + m.b)
        sd = math.sqrt(mean * (1 - mean) / (m.a + m.b + 1))
        lo, hi = max(mean - 12 * sd, 0.0), min(mean + 12 * sd, 1.0)
        p, wu = (lo + u * (hi - lo))[None, :], wu * (hi - lo)
        p_prior = np.exp(stats.beta.logpdf(p, m.a, m.b))
    prior = m.alpha**m.r * np.exp(-m.alpha * lam) / math.gamma(m.r + 1) * p_prior
    weight = wv[:, None] * wu[None, :] * prior
    alive = (1 - p) ** x * lam**x * np.exp(-lam * T)
    dead = p * (1 - p) ** (x - 1) * lam**x * np.exp(-lam * t_x) if x > 0 else 0.0
    future = -np.expm1(-lam * p * t) / p
    total = float(np.sum(weight * (alive + dead)))
    return {
        "log_likelihood": math.log(total),
        "p_alive": float(np.sum(weight * alive)) / total,
        "expected": float(np.sum(weight * alive * future)) / total,
        "within": float(np.sum(weight * alive * -np.expm1(-lam * t))) / total,
        "unconditional": float(np.sum(weight * future)),
    }


def test_published_cdnow_conditional_expectation() -> None:
    # Fader, Hardie & Lee's spreadsheet (also lifetimes' test): customer 0001 of CDNOW
    assert CDNOW.expected_purchases(39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=5e-4)


@pytest.mark.parametrize(
    ("x", "t_x", "T", "t"),
    [(0, 0.0, 38.86, 39.0), (1, 1.71, 38.86, 39.0), (2, 30.43, 38.86, 39.0), (5, 20.0, 30.0, 10.0)],
)
def test_closed_forms_equal_direct_integration(x: int, t_x: float, T: float, t: float) -> None:
    want = _by_quadrature(CDNOW, x, t_x, T, t)
    assert CDNOW.log_likelihood(x, t_x, T) == pytest.approx(want["log_likelihood"], abs=1e-6)
    assert CDNOW.p_alive(x, t_x, T) == pytest.approx(want["p_alive"], rel=1e-6)
    assert CDNOW.expected_purchases(t, x, t_x, T) == pytest.approx(want["expected"], rel=1e-6)
    assert CDNOW.expected_purchases_unconditional(t) == pytest.approx(
        want["unconditional"], rel=1e-6
    )


@pytest.mark.parametrize(
    ("x", "t_x", "T", "t"),
    [
        (0, 0.0, 38.86, 39.0),
        (1, 1.71, 38.86, 39.0),
        (2, 30.43, 38.86, 39.0),
        (5, 20.0, 30.0, 10.0),
        (12, 37.0, 38.86, 0.5),
    ],
)
def test_p_purchase_within_equals_direct_integration(
    x: int, t_x: float, T: float, t: float
) -> None:
    want = _by_quadrature(CDNOW, x, t_x, T, t)["within"]
    assert CDNOW.p_purchase_within(t, x, t_x, T) == pytest.approx(want, rel=1e-6)


def _simulate_with_next_window(
    m: BgNbd, T: np.ndarray, t: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x) on (0, T] and whether the customer buys in (T, T+t], from the generative story.

    Written out purchase by purchase (independently of `simulate`): wait Exp(λ), buy, then drop
    out with probability p; the first purchase after T ends a customer's story.
    """
    n = len(T)
    lam = rng.gamma(shape=m.r, scale=1.0 / m.alpha, size=n)
    p = rng.beta(m.a, m.b, size=n)
    x, t_x, now = np.zeros(n), np.zeros(n), np.zeros(n)
    bought_later = np.zeros(n, dtype=bool)
    active = np.arange(n)
    while active.size:
        with np.errstate(divide="ignore"):
            now[active] += rng.exponential(size=active.size) / lam[active]
        bought_later[active] = (now[active] > T[active]) & (now[active] <= T[active] + t)
        active = active[now[active] <= T[active]]
        x[active] += 1
        t_x[active] = now[active]
        active = active[rng.random(active.size) >= p[active]]
    return x, t_x, bought_later


def test_p_purchase_within_matches_forward_simulation() -> None:
    # E[1{buys in (T, T+t]} | x, t_x, T] is the prediction, so within any group of simulated
    # customers selected on their history the share who buy must match the mean prediction
    rng = np.random.default_rng(11)
    T = np.full(400_000, 38.86)
    t = 20.0
    x, t_x, bought = _simulate_with_next_window(CDNOW, T, t, rng)
    assert_matches_forward_simulation(CDNOW, t, x, t_x, T, bought)


def test_p_purchase_within_is_zero_at_zero_increasing_and_at_most_p_alive() -> None:
    t = np.array([0.0, 1e-9, 0.5, 1.0, 5.0, 20.0, 39.0, 200.0, 1e4])
    for x, t_x, T in [(0, 0.0, 38.86), (1, 1.71, 38.86), (2, 30.43, 38.86), (50, 38.0, 38.86)]:
        within = CDNOW.p_purchase_within(t, x, t_x, T)
        alive = CDNOW.p_alive(x, t_x, T)
        assert within[0] == 0.0
        assert np.all(np.diff(within) >= 0)
        assert np.all(np.diff(within[:6]) > 0)  # up to t = 20 (later it can round to P(alive))
        assert np.all(within <= alive)
    # small t: the rate of a first purchase, P(alive)·(r+x)/(α+T) per unit time
    x, t_x, T = 2, 30.43, 38.86
    rate = CDNOW.p_alive(x, t_x, T) * (CDNOW.r + x) / (CDNOW.alpha + T)
    assert CDNOW.p_purchase_within(1e-8, x, t_x, T) == pytest.approx(rate * 1e-8, rel=1e-6)
    with pytest.raises(ValueError):
        CDNOW.p_purchase_within(-1.0, x, t_x, T)


def test_p_purchase_within_is_vectorised() -> None:
    x = np.array([0, 1, 2, 50, 5000])
    t_x = np.array([0.0, 10, 30.43, 38, 38])
    got = CDNOW.p_purchase_within(13.0, x, t_x, 38.86)
    assert got.shape == (5,) and np.all(np.isfinite(got))
    one_by_one = [
        CDNOW.p_purchase_within(13.0, int(a), float(b), 38.86) for a, b in zip(x, t_x, strict=True)
    ]
    np.testing.assert_allclose(got, one_by_one)
    assert isinstance(CDNOW.p_purchase_within(1.0, 1, 1.0, 2.0), float)


def test_unconditional_expectation_matches_simulation() -> None:
    rng = np.random.default_rng(3)
    x, _ = simulate(CDNOW, np.full(200_000, 39.0), rng)
    se = x.std() / math.sqrt(len(x))
    assert abs(x.mean() - CDNOW.expected_purchases_unconditional(39.0)) < 4 * se


def test_p_alive_is_one_without_repeat_purchases_and_a_probability_otherwise() -> None:
    assert CDNOW.p_alive(0, 0.0, 38.86) == 1.0
    assert np.all(CDNOW.p_alive(np.zeros(3), np.zeros(3), np.array([1.0, 10.0, 1e4])) == 1.0)
    grid = np.array([(x, t_x, T) for x in range(0, 60, 7) for T in (1, 20, 80) for t_x in (0, T)])
    alive = CDNOW.p_alive(grid[:, 0], grid[:, 1], grid[:, 2])
    assert np.all((alive >= 0) & (alive <= 1))


def test_more_recent_last_purchase_means_more_alive_and_more_purchases() -> None:
    t_x = np.linspace(0.5, 38.0, 40)
    for x in (1, 2, 5, 20):
        alive = CDNOW.p_alive(x, t_x, 38.86)
        expected = CDNOW.expected_purchases(39, x, t_x, 38.86)
        assert np.all(np.diff(alive) > 0)
        assert np.all(np.diff(expected) > 0)
    # a customer who just bought: more purchases means a higher rate, so more to come
    recent = CDNOW.expected_purchases(39, np.arange(1, 30), 38.0, 38.86)
    assert np.all(np.diff(recent) > 0)


def test_predictions_are_vectorised_and_finite_for_heavy_buyers() -> None:
    x = np.array([0, 1, 50, 500, 5000])
    t_x = np.array([0.0, 10, 38, 38, 38])
    got = CDNOW.expected_purchases(39, x, t_x, 38.86)
    assert got.shape == (5,) and np.all(np.isfinite(got)) and np.all(got >= 0)
    one_by_one = [
        CDNOW.expected_purchases(39, int(a), float(b), 38.86) for a, b in zip(x, t_x, strict=True)
    ]
    np.testing.assert_allclose(got, one_by_one)
    assert isinstance(CDNOW.p_alive(1, 1.0, 2.0), float)


def test_a_fixed_drop_out_chance_keeps_the_expectations_right() -> None:
    # huge a and b (a drop-out chance a/(a+b) nearly fixed), as a fit on a few weeks of
    # history gave: the transformed hypergeometric form overflows there, the textbook one not
    model = BgNbd(r=0.867, alpha=3.41, a=17726.0, b=162754.0)
    for x, t_x, T in ((4, 9.15, 12.0), (0, 0.0, 8.55), (1, 0.57, 11.26), (12, 11.0, 12.0)):
        want = _by_quadrature(model, x, t_x, T, 12.9)["expected"]
        assert model.expected_purchases(12.9, x, t_x, T) == pytest.approx(want, rel=2e-6)


def test_a_equal_to_one_is_handled_continuously() -> None:
    values = [
        BgNbd(0.243, 4.414, a, 2.426).expected_purchases(39, 2, 30.43, 38.86)
        for a in (1 - 1e-3, 1.0, 1 + 1e-3)
    ]
    assert np.all(np.isfinite(values))
    assert values[0] > values[1] > values[2]
    assert abs(values[1] - (values[0] + values[2]) / 2) < 1e-6


def test_parameter_recovery_on_a_simulated_cdnow_like_cohort() -> None:
    # sampling spread seen over 12 seeds: 2 % (r), 3 % (α), 8 % (a), 10 % (b) relative
    assert_recovers(CDNOW, simulate, {"r": 0.10, "alpha": 0.15, "a": 0.35, "b": 0.40})


def test_weights_equal_repeated_rows_and_time_units_only_rescale_alpha() -> None:
    rng = np.random.default_rng(5)
    T = rng.uniform(27.0, 39.0, 3_000)
    x, t_x = simulate(CDNOW, T, rng)
    once = BgNbd.fit(x, t_x, T)
    twice = BgNbd.fit(np.tile(x, 2), np.tile(t_x, 2), np.tile(T, 2))
    weighted = BgNbd.fit(x, t_x, T, weights=np.full(len(x), 2.0))
    for name in ("r", "alpha", "a", "b"):
        assert getattr(twice, name) == pytest.approx(getattr(weighted, name), rel=1e-5)
        assert getattr(once, name) == pytest.approx(getattr(weighted, name), rel=1e-5)
    days = BgNbd.fit(x, t_x * 7, T * 7)
    assert days.alpha == pytest.approx(once.alpha * 7, rel=1e-4)
    for name in ("r", "a", "b"):
        assert getattr(days, name) == pytest.approx(getattr(once, name), rel=1e-4)
    assert days.p_alive(2, 70.0, 140.0) == pytest.approx(once.p_alive(2, 10.0, 20.0), rel=1e-4)


def test_round_trips_through_json() -> None:
    assert_round_trips_through_json(CDNOW, simulate)


@pytest.mark.parametrize(
    ("x", "t_x", "T"), [(-1, 0.0, 1.0), (1, 2.0, 1.0), (1, -0.5, 1.0), (float("nan"), 0.0, 1.0)]
)
def test_impossible_histories_are_rejected(x: float, t_x: float, T: float) -> None:
    with pytest.raises(ValueError):
        CDNOW.p_alive(x, t_x, T)


def test_parameters_must_be_positive() -> None:
    with pytest.raises(ValueError, match="alpha"):
        BgNbd(0.2, 0.0, 1.0, 1.0)


def test_summarise_orders_follows_the_model_definitions() -> None:
    # customer 0: first on day 0, two orders on day 7 (one purchase), one on day 21.5;
    # customer 1: a single order; customer 2: only after the cut-off; customer 3: none at all
    customer = [0, 0, 0, 0, 1, 2, 0]
    day = [0.2, 7.1, 7.9, 21.5, 10.0, 30.0, 28.0]
    x, t_x, T, seen = summarise_orders(customer, day, cutoff_day=28.0, n_customers=4)
    assert seen.tolist() == [True, True, False, False]
    assert x.tolist() == [2.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(t_x, [3.0, 0.0, 0.0, 0.0])  # day 21 − day 0, in weeks
    np.testing.assert_allclose(T, [4.0, 18 / 7, 0.0, 0.0])
    days = summarise_orders(customer, day, cutoff_day=28.0, n_customers=4, period_days=1.0)
    np.testing.assert_allclose(days[1], [21.0, 0.0, 0.0, 0.0])
    assert CDNOW.p_alive(x[seen], t_x[seen], T[seen]).shape == (2,)


CDNOW_SUMMARY = os.environ.get("RECSVC_CDNOW_SUMMARY")


@pytest.mark.skipif(not CDNOW_SUMMARY, reason="set RECSVC_CDNOW_SUMMARY to CDNOW's 2,357-row CBS")
def test_published_cdnow_fit() -> None:  # pragma: no cover - needs the data set, not shipped
    # a CSV with columns ID,frequency,recency,T (e.g. lifetimes' cdnow_customers_summary.csv)
    rows = np.genfromtxt(Path(str(CDNOW_SUMMARY)), delimiter=",", skip_header=1)
    x, t_x, T = rows[:, 1], rows[:, 2], rows[:, 3]
    assert float(np.sum(CDNOW.log_likelihood(x, t_x, T))) == pytest.approx(-9582.4, abs=0.05)
    fitted = BgNbd.fit(x, t_x, T)
    assert [fitted.r, fitted.alpha, fitted.a, fitted.b] == pytest.approx(
        [CDNOW.r, CDNOW.alpha, CDNOW.a, CDNOW.b], abs=1e-3
    )
