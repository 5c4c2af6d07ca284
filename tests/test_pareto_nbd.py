"""Pareto/NBD: formulas against integration over (λ, μ), published values, simulation, fit."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from btyd_checks import (
    assert_matches_forward_simulation,
    assert_recovers,
    assert_round_trips_through_json,
)
from recsvc.ml.pareto_nbd import ParetoNbd, _log_power_integral, simulate

# Fader, Hardie & Lee (2005), "Counting your customers the easy way", table 1, weeks:
# (r, α, s, β) = (0.553, 10.578, 0.606, 11.669); these are the same to one more digit
CDNOW = ParetoNbd(r=0.5533, alpha=10.5776, s=0.6061, beta=11.6689)

# one parameter set per code path: α ≈ β (the CDNOW fit, all ₂F₁), α < β and α > β by far
# (the quadrature), α == β with s = 1 (₂F₁ argument 0, the s−1 in the expectations is 0)
PARAMS = {
    "cdnow": CDNOW,
    "alpha<beta": ParetoNbd(0.55, 2.0, 0.6, 30.0),
    "alpha>beta": ParetoNbd(0.55, 30.0, 0.6, 2.0),
    "alpha<<beta": ParetoNbd(0.55, 0.5, 0.6, 40.0),
    "alpha>>beta": ParetoNbd(0.55, 40.0, 0.6, 0.5),
    "alpha=beta,s=1": ParetoNbd(0.8, 8.0, 1.0, 8.0),
    "alpha=beta": ParetoNbd(0.8, 8.0, 2.5, 8.0),
}


def _by_integration(
    m: ParetoNbd,
    x: int,
    t_x: float,
    T: float,
    t: float,
    ln_lambda: tuple[float, float, float] = (-60.0, 6.0, 0.05),
) -> dict[str, float]:
    """The model's quantities straight from its definition, integrating over (λ, μ) on a grid.

    The trapezoid rule in (ln λ, ln μ), ln μ on [−60, 6] in steps of 0.05 and ln λ on
    `ln_lambda` (from, to, step): the integrands are smooth and fall off exponentially at both
    ends in these variables, where the trapezoid rule converges faster than any power of the
    step (checked during development against arbitrary-precision closed forms on 11 of these
    cases: within 1.2e−13 with these defaults).
    An individual with rates (λ, μ) has the likelihood λ^x e^−(λ+μ)T (alive at T) plus
    λ^x μ/(λ+μ) (e^−(λ+μ)t_x − e^−(λ+μ)T) (died in (t_x, T]); alive at T they make
    λ/μ (1 − e^−μt) purchases in the next t on average and at least one with probability
    λ/(λ+μ) (1 − e^−(λ+μ)t).
    """
    h_mu = 0.05
    u, v = np.arange(*ln_lambda), np.arange(-60.0, 6.0, h_mu)
    h = ln_lambda[2] * h_mu
    lam, mu = np.exp(u)[:, None], np.exp(v)[None, :]
    log_prior = (m.r * np.log(m.alpha) + m.r * u - m.alpha * np.exp(u) - special.gammaln(m.r))[
        :, None
    ] + (m.s * np.log(m.beta) + m.s * v - m.beta * np.exp(v) - special.gammaln(m.s))[None, :]
    rate = lam + mu
    log_alive = log_prior + x * np.log(lam) - rate * T
    with np.errstate(divide="ignore"):  # t_x = T: no room to die in between
        log_dead = (
            log_prior + x * np.log(lam) + np.log(mu / rate) - rate * t_x
            + np.log(-np.expm1(-rate * (T - t_x)))
        )  # fmt: skip
    shift = float(np.max(np.logaddexp(log_alive, log_dead)))
    alive, dead = np.exp(log_alive - shift), np.exp(log_dead - shift)
    total = float(np.sum(alive + dead))
    future = lam / mu * -np.expm1(-mu * t)
    return {
        "log_likelihood": math.log(total * h) + shift,
        "p_alive": float(np.sum(alive)) / total,
        "expected": float(np.sum(alive * future)) / total,
        "within": float(np.sum(alive * lam / rate * -np.expm1(-rate * t))) / total,
        "unconditional": float(np.sum(np.exp(log_prior) * future)) * h,
    }


HISTORIES = [
    (0, 0.0, 38.86, 39.0),  # no repeat purchase
    (2, 30.43, 38.86, 39.0),
    (50, 38.0, 38.86, 13.0),  # heavy buyer, recent
    (50, 5.0, 38.86, 13.0),  # heavy buyer gone quiet: P(alive) ~ 1e−24
    (7, 150.0, 200.0, 52.0),  # long T
    (3, 39.0, 39.0, 1e-3),  # bought on the last day, short horizon
]


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize(("x", "t_x", "T", "t"), HISTORIES)
def test_closed_forms_equal_direct_integration(
    name: str, x: int, t_x: float, T: float, t: float
) -> None:
    m = PARAMS[name]
    want = _by_integration(m, x, t_x, T, t)
    assert m.log_likelihood(x, t_x, T) == pytest.approx(want["log_likelihood"], abs=1e-8)
    assert m.p_alive(x, t_x, T) == pytest.approx(want["p_alive"], rel=1e-8)
    assert m.expected_purchases(t, x, t_x, T) == pytest.approx(want["expected"], rel=1e-8)
    assert m.p_purchase_within(t, x, t_x, T) == pytest.approx(want["within"], rel=1e-8)
    assert m.expected_purchases_unconditional(t) == pytest.approx(want["unconditional"], rel=1e-8)


def test_very_heavy_buyers_equal_direct_integration() -> None:
    # x = 500: the posterior of ln λ has sd 0.045, so a finer grid where it lies (λ ≈ 6..13)
    for m in (CDNOW, PARAMS["alpha<<beta"], PARAMS["alpha>>beta"]):
        for t_x in (10.0, 38.5):
            want = _by_integration(m, 500, t_x, 39.0, 5.0, ln_lambda=(-3.0, 5.0, 0.005))
            assert m.log_likelihood(500, t_x, 39.0) == pytest.approx(
                want["log_likelihood"], abs=1e-8
            )
            assert m.p_alive(500, t_x, 39.0) == pytest.approx(want["p_alive"], rel=1e-8)
            assert m.p_purchase_within(5.0, 500, t_x, 39.0) == pytest.approx(
                want["within"], rel=1e-8
            )


def test_the_integral_behind_the_likelihood_on_both_sides_of_the_hyp2f1_switch() -> None:
    # ln ∫_a^b (A+τ)^−m (B+τ)^−n dτ against scipy.integrate.quad in y = ln(min(A,B)+τ), on
    # intervals that lie before, after and across the point where the ₂F₁ argument is 1/2
    from scipy import integrate

    for A, B in [(100.0, 1.0), (1.0, 100.0), (5.0, 4.0)]:
        for m, n in [(0.55, 1.6), (3.55, 1.6), (51.0, 0.6), (1.6, 20.0)]:
            for a, b in [(0.0, 10.0), (0.0, 300.0), (50.0, 300.0), (97.0, 99.0)]:
                small = min(A, B)

                def integrand(
                    y: float,
                    m: float = m,
                    n: float = n,
                    A: float = A,
                    B: float = B,
                    c: float = small,
                ) -> float:
                    tau = math.exp(y) - c
                    return math.exp(y - m * math.log(A + tau) - n * math.log(B + tau))

                got = float(_log_power_integral(*(np.array([v]) for v in (a, b, A, B, m, n)))[0])
                value, _ = integrate.quad(
                    integrand, math.log(small + a), math.log(small + b), epsabs=0, epsrel=1e-13
                )
                assert got == pytest.approx(math.log(value), abs=1e-10), (A, B, m, n, a, b)


def test_published_btyd_walkthrough_customer() -> None:
    # The R package BTYD's vignette "Buy 'Til You Die - A Walkthrough" (Pareto/NBD, individual
    # level): with its CDNOW estimates (0.5534, 10.5802, 0.6061, 11.6562) customer 1516
    # (x = 26, t.x = 30.86, T.cal = 31, as printed) has P(alive) 0.9979 and is expected to make
    # 25.46 transactions in the next 52 weeks. lifetimes' tests use the same two numbers
    # (test_conditional_probability_alive and
    # test_conditional_expectation_returns_same_value_as_R_BTYD).
    btyd = ParetoNbd(0.5534, 10.5802, 0.6061, 11.6562)
    assert btyd.p_alive(26, 30.86, 31.0) == pytest.approx(0.9979, abs=1e-4)
    assert btyd.expected_purchases(52, 26, 30.86, 31.0) == pytest.approx(25.46, abs=0.01)


def test_unconditional_expectation_matches_simulation() -> None:
    rng = np.random.default_rng(3)
    for t in (5.0, 39.0, 150.0):
        x, _ = simulate(CDNOW, np.full(200_000, t), rng)
        se = x.std() / math.sqrt(len(x))
        assert abs(x.mean() - CDNOW.expected_purchases_unconditional(t)) < 4 * se


def test_simulate_follows_the_likelihood() -> None:
    # The likelihood L(x, t_x, T) is the density of the purchase times; integrated over the
    # x − 1 earlier ones (t_x^(x−1)/(x−1)!) it is the density of (X = x, last purchase at t_x).
    # So P(X = k, t_x <= c) = ∫_0^c L(k, u, T) u^(k−1)/(k−1)! du and P(X = 0) = L(0, 0, T):
    # simulated shares must match these (midpoint rule on 4,000 points)
    rng = np.random.default_rng(8)
    T, c, n = 20.0, 8.0, 400_000
    x, t_x = simulate(CDNOW, np.full(n, T), rng)
    assert np.all((t_x >= 0) & (t_x <= T)) and np.all(t_x[x == 0] == 0)
    checks = [(float(np.mean(x == 0)), math.exp(CDNOW.log_likelihood(0, 0.0, T)))]
    for k in range(1, 4):
        for upper in (c, T):
            u = (np.arange(4000) + 0.5) / 4000 * upper
            density = np.exp(CDNOW.log_likelihood(k, u, T)) * u ** (k - 1) / math.factorial(k - 1)
            checks.append(
                (float(np.mean((x == k) & (t_x <= upper))), float(np.mean(density)) * upper)
            )
    for share, p in checks:
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (share, p)


def test_p_purchase_within_matches_forward_simulation() -> None:
    # simulate histories on (0, T] and the next t: within any group selected on the history
    # the share who buy in (T, T+t] must equal the mean predicted probability
    rng = np.random.default_rng(17)
    n, T, t = 400_000, 38.86, 20.0
    lam = rng.gamma(CDNOW.r, 1 / CDNOW.alpha, n)
    mu = rng.gamma(CDNOW.s, 1 / CDNOW.beta, n)
    lifetime = rng.exponential(size=n) / mu
    seen = np.minimum(lifetime, T)
    x = rng.poisson(lam * seen).astype(float)
    t_x = np.where(x > 0, seen * rng.random(n) ** (1 / np.maximum(x, 1)), 0.0)
    # memoryless: alive at T, the next purchase is an Exp(λ) wait, and must beat the death
    next_purchase = T + rng.exponential(size=n) / lam
    bought = (lifetime > T) & (next_purchase <= np.minimum(lifetime, T + t))
    assert_matches_forward_simulation(CDNOW, t, x, t_x, np.full(n, T), bought)


def test_more_recent_last_purchase_means_more_alive_and_more_purchases() -> None:
    t_x = np.linspace(0.5, 38.0, 40)
    for m in (CDNOW, PARAMS["alpha<<beta"], PARAMS["alpha>>beta"]):
        for x in (1, 2, 5, 20):
            alive = m.p_alive(x, t_x, 38.86)
            within = m.p_purchase_within(13.0, x, t_x, 38.86)
            expected = m.expected_purchases(39.0, x, t_x, 38.86)
            assert np.all(np.diff(alive) > 0)
            assert np.all(np.diff(within) > 0)
            assert np.all(np.diff(expected) > 0)


def test_predictions_are_vectorised_and_equal_scalar_ones() -> None:
    # rows in both code paths (α ≈ β and α ≪ β) in one call, heavy buyers included
    x = np.array([0, 1, 2, 50, 500, 5000, 3])
    t_x = np.array([0.0, 10, 30.43, 38, 38, 38, 1.0])
    for m in (CDNOW, PARAMS["alpha<<beta"], PARAMS["alpha>>beta"]):
        for method in (m.p_alive, m.log_likelihood):
            got = method(x, t_x, 38.86)
            assert got.shape == (7,) and np.all(np.isfinite(got))
            one_by_one = [method(int(a), float(b), 38.86) for a, b in zip(x, t_x, strict=True)]
            np.testing.assert_allclose(got, one_by_one, rtol=1e-12)
        for method in (m.expected_purchases, m.p_purchase_within):
            got = method(13.0, x, t_x, 38.86)
            assert got.shape == (7,) and np.all(np.isfinite(got)) and np.all(got >= 0)
            one_by_one = [
                method(13.0, int(a), float(b), 38.86) for a, b in zip(x, t_x, strict=True)
            ]
            np.testing.assert_allclose(got, one_by_one, rtol=1e-12)
    # broadcasting: one customer, several horizons
    assert CDNOW.p_purchase_within(np.array([1.0, 2.0]), 2, 30.43, 38.86).shape == (2,)
    assert isinstance(CDNOW.p_alive(1, 1.0, 2.0), float)
    assert isinstance(CDNOW.p_purchase_within(1.0, 1, 1.0, 2.0), float)


def test_p_alive_is_a_probability_even_for_extreme_histories_and_parameters() -> None:
    grid = np.array(
        [
            (x, t_x, T)
            for x in (0, 1, 7, 50, 300, 1000)
            for T in (0.0, 1, 39, 1000)
            for t_x in (0, T / 2, T)
        ]
    )
    grid[grid[:, 0] == 0, 1] = 0.0
    for m in (*PARAMS.values(), ParetoNbd(10.465, 7.98565181e-03, 3.0516, 2.820)):
        with np.errstate(over="raise", invalid="raise"):  # no overflow, no nan on the way
            alive = m.p_alive(grid[:, 0], grid[:, 1], grid[:, 2])
            ll = m.log_likelihood(grid[:, 0], grid[:, 1], grid[:, 2])
        assert np.all((alive >= 0) & (alive <= 1)) and np.all(np.isfinite(ll))
        # no time to die: alive for sure
        assert np.all(alive[grid[:, 2] == 0] == 1.0)


def test_p_purchase_within_is_zero_at_zero_increasing_and_at_most_p_alive() -> None:
    t = np.array([0.0, 1e-9, 0.5, 1.0, 5.0, 20.0, 39.0, 200.0, 1e4])
    for m in PARAMS.values():
        for x, t_x, T in [(0, 0.0, 38.86), (1, 1.71, 38.86), (2, 30.43, 38.86), (50, 38.0, 38.86)]:
            within = m.p_purchase_within(t, x, t_x, T)
            alive = m.p_alive(x, t_x, T)
            assert within[0] == 0.0
            assert np.all(np.diff(within) >= 0)
            assert np.all(np.diff(within[:6]) > 0)  # up to t = 20 (later it may round off)
            assert np.all(within <= alive)
    # small t: P(alive) times the rate of a first purchase, (r+x)/(α+T) per unit time
    x, t_x, T = 2, 30.43, 38.86
    rate = CDNOW.p_alive(x, t_x, T) * (CDNOW.r + x) / (CDNOW.alpha + T)
    assert CDNOW.p_purchase_within(1e-8, x, t_x, T) == pytest.approx(rate * 1e-8, rel=1e-6)
    # it can never exceed what the expected count allows (P(N >= 1) <= E[N])
    ts = np.array([1.0, 13.0, 52.0])
    assert np.all(CDNOW.p_purchase_within(ts, x, t_x, T) < CDNOW.expected_purchases(ts, x, t_x, T))
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            CDNOW.p_purchase_within(bad, x, t_x, T)


def test_s_equal_to_one_is_handled_continuously() -> None:
    values = [
        ParetoNbd(0.55, 10.58, s, 11.67).expected_purchases(39, 2, 30.43, 38.86)
        for s in (1 - 1e-7, 1.0, 1 + 1e-7)
    ]
    assert np.all(np.isfinite(values))
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    assert values[2] == pytest.approx(values[1], rel=1e-6)


def test_parameter_recovery_on_a_simulated_cdnow_like_cohort() -> None:
    # sampling spread seen over 12 seeds: 3.5 % (r), 2.9 % (α), 10 % (s), 18 % (β) relative
    # standard deviation (largest deviations 8 %, 5 %, 18 %, 32 %): about four of them
    assert_recovers(CDNOW, simulate, {"r": 0.15, "alpha": 0.12, "s": 0.40, "beta": 0.70})


def test_weights_equal_repeated_rows_and_time_units_only_rescale_the_rates() -> None:
    rng = np.random.default_rng(5)
    T = rng.uniform(27.0, 39.0, 3_000)
    x, t_x = simulate(PARAMS["alpha<beta"], T, rng)
    once = ParetoNbd.fit(x, t_x, T)
    twice = ParetoNbd.fit(np.tile(x, 2), np.tile(t_x, 2), np.tile(T, 2))
    weighted = ParetoNbd.fit(x, t_x, T, weights=np.full(len(x), 2.0))
    for name in ("r", "alpha", "s", "beta"):
        assert getattr(twice, name) == pytest.approx(getattr(weighted, name), rel=1e-5)
        assert getattr(once, name) == pytest.approx(getattr(weighted, name), rel=1e-5)
    days = ParetoNbd.fit(x, t_x * 7, T * 7)
    assert days.alpha == pytest.approx(once.alpha * 7, rel=1e-4)
    assert days.beta == pytest.approx(once.beta * 7, rel=1e-4)
    for name in ("r", "s"):
        assert getattr(days, name) == pytest.approx(getattr(once, name), rel=1e-4)
    assert days.p_alive(2, 70.0, 140.0) == pytest.approx(once.p_alive(2, 10.0, 20.0), rel=1e-4)
    with pytest.raises(ValueError):
        ParetoNbd.fit(x, t_x, T, weights=np.zeros(len(x)))


def test_round_trips_through_json() -> None:
    assert_round_trips_through_json(CDNOW, simulate)


@pytest.mark.parametrize(
    ("x", "t_x", "T"), [(-1, 0.0, 1.0), (1, 2.0, 1.0), (1, -0.5, 1.0), (float("nan"), 0.0, 1.0)]
)
def test_impossible_histories_are_rejected(x: float, t_x: float, T: float) -> None:
    with pytest.raises(ValueError):
        CDNOW.p_alive(x, t_x, T)
    with pytest.raises(ValueError):
        CDNOW.p_purchase_within(1.0, x, t_x, T)


def test_parameters_must_be_positive() -> None:
    with pytest.raises(ValueError, match="beta"):
        ParetoNbd(0.5, 10.0, 0.6, 0.0)


CDNOW_SUMMARY = os.environ.get("RECSVC_CDNOW_SUMMARY")


@pytest.mark.skipif(not CDNOW_SUMMARY, reason="set RECSVC_CDNOW_SUMMARY to CDNOW's 2,357-row CBS")
def test_published_cdnow_fit() -> None:  # pragma: no cover - needs the data set, not shipped
    # a CSV with columns ID,frequency,recency,T (e.g. lifetimes' cdnow_customers_summary.csv)
    rows = np.genfromtxt(Path(str(CDNOW_SUMMARY)), delimiter=",", skip_header=1)
    x, t_x, T = rows[:, 1], rows[:, 2], rows[:, 3]
    fitted = ParetoNbd.fit(x, t_x, T)
    assert fitted.fit_info is not None
    assert fitted.fit_info.log_likelihood >= float(np.sum(CDNOW.log_likelihood(x, t_x, T)))
    assert [fitted.r, fitted.alpha, fitted.s, fitted.beta] == pytest.approx(
        [0.553, 10.578, 0.606, 11.669], rel=1e-2
    )
