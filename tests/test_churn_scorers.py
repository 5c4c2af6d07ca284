"""The classic churn scorers a churn version may serve (ml.runtime): the same numbers as
the libraries they were fitted with, one code path for training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.ml import inputs
from recsvc.ml.btyd import BgNbd
from recsvc.ml.pareto_nbd import ParetoNbd
from recsvc.ml.runtime import ClassicChurn, LinearModel, WeeklyBtyd, logit
from recsvc.offline.fitting import logistic_baseline

BG = BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)
PARETO = ParetoNbd(r=0.553, alpha=10.578, s=0.606, beta=11.669)


def _members(n: int, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    orders = rng.integers(0, 12, n).astype(float)
    cols = {
        "orders_total": orders,
        "days_since_last_order": np.where(orders > 0, rng.uniform(1, 400, n), np.nan),
        "mean_interpurchase_days": np.where(orders > 1, rng.uniform(5, 90, n), np.nan),
        "orders_365d": np.minimum(orders, rng.integers(0, 8, n)),
        "spend_365d_minor": rng.uniform(0, 50_000, n),
        "tenure_days": rng.uniform(30, 900, n),
    }
    cols["spend_365d_minor"][rng.random(n) < 0.1] = np.nan  # missing values are imputed
    return cols


def test_the_linear_model_scores_as_the_fitted_pipeline() -> None:
    cols = _members(3000)
    X = inputs.rfm_matrix(cols)
    y = (np.nan_to_num(cols["days_since_last_order"], nan=1e6) > 200).astype(np.int64)
    pipeline = logistic_baseline(X, y)
    model = LinearModel.from_pipeline(inputs.RFM_INPUTS, pipeline)
    np.testing.assert_allclose(model.margin(X), pipeline.decision_function(X), rtol=0,
                               atol=1e-9)
    again = LinearModel.from_dict(model.to_dict())
    assert again == model
    contrib = model.contributions(X)
    assert contrib.shape == (3000, len(inputs.RFM_INPUTS))
    np.testing.assert_allclose(contrib.sum(axis=1) + model.intercept, model.margin(X))


@pytest.mark.parametrize("kind,model", [("bgnbd_p_no_purchase", BG),
                                        ("pareto_nbd_p_no_purchase", PARETO)])
def test_a_btyd_scorer_is_the_log_odds_of_no_purchase_within_the_horizon(
        kind: str, model: object) -> None:
    cols = _members(500)
    extra = {"horizon_days": 91, "prior_fallback": -0.4, "bgnbd_weekly": BG.to_dict(),
             "pareto_nbd_weekly": PARETO.to_dict()}
    margin, contrib = ClassicChurn(extra).margin(kind, cols)
    assert contrib is None  # no additive attribution for a BTYD model
    x, t_x, T = inputs.purchase_history(cols)
    known = np.isfinite(x)
    buys = WeeklyBtyd(model).p_purchase_within(91, x[known], t_x[known], T[known])
    np.testing.assert_allclose(margin[known], logit(1.0 - buys))
    assert (margin[~known] == -0.4).all() and (~known).any()  # no order yet: the base rate


def test_the_other_classic_scores_rank_churn_as_their_models_do() -> None:
    cols = _members(400)
    extra = {"horizon_days": 91, "prior_fallback": -0.4, "bgnbd_weekly": BG.to_dict(),
             "pareto_nbd_weekly": PARETO.to_dict()}
    classic = ClassicChurn(extra)
    x, t_x, T = inputs.purchase_history(cols)
    known = np.isfinite(x)
    h = (x[known], t_x[known], T[known])
    for kind, model in (("bgnbd_expected_purchases", BG), ("pareto_nbd_expected_purchases",
                                                           PARETO)):
        # the log-odds of no purchase, were the expected purchases Poisson: ranks as -E
        score, _ = classic.margin(kind, cols)
        expected = WeeklyBtyd(model).expected_purchases(91, *h)
        np.testing.assert_allclose(score[known], logit(np.exp(-expected)))
        assert (np.diff(score[known][np.argsort(expected)]) <= 1e-12).all()
        assert (score[~known] == -0.4).all()  # no order yet: the base rate
    score, _ = classic.margin("bgnbd_p_alive", cols)
    np.testing.assert_allclose(score[known], logit(1.0 - WeeklyBtyd(BG).p_alive(*h)))
    score, _ = classic.margin("recency_only", cols)  # the log of the days since the last order
    np.testing.assert_allclose(score, np.log1p(inputs.rfm_matrix(cols)[:, 0]))
    assert (score[~known] == np.log1p(inputs.NEVER_ORDERED_DAYS)).all()


def test_a_version_serving_a_btyd_model_serves_its_refit() -> None:
    refit = BgNbd(r=0.5, alpha=3.0, a=0.5, b=3.0)
    extra = {"horizon_days": 91, "prior_fallback": 0.0, "bgnbd_weekly": BG.to_dict(),
             "served": "bgnbd_expected_purchases", "served_btyd": refit.to_dict()}
    cols = _members(50)
    x, t_x, T = inputs.purchase_history(cols)
    known = np.isfinite(x)
    score, _ = ClassicChurn(extra).margin("bgnbd_p_no_purchase", cols)
    buys = WeeklyBtyd(refit).p_purchase_within(91, x[known], t_x[known], T[known])
    np.testing.assert_allclose(score[known], logit(1.0 - buys))


def test_a_version_without_the_scorer_it_is_asked_for_says_so() -> None:
    classic = ClassicChurn({"horizon_days": 90, "prior_fallback": 0.0})
    with pytest.raises(ValueError, match="no RFM regression"):
        classic.margin("rfm_logistic_regression", _members(5))
    with pytest.raises(ValueError, match="no 'pareto_nbd_p_no_purchase' scorer"):
        classic.margin("pareto_nbd_p_no_purchase", _members(5))


@pytest.mark.parametrize("model", [BG, PARETO])
def test_the_horizon_answers_in_one_pass_are_the_two_answers(model: object) -> None:
    x, t_x, T = inputs.purchase_history(_members(400))
    known = np.isfinite(x)
    h = (x[known], t_x[known], T[known])
    weekly = WeeklyBtyd(model)
    within, expected = weekly.horizon_answers(91, *h)
    np.testing.assert_array_equal(within, weekly.p_purchase_within(91, *h))
    np.testing.assert_array_equal(expected, weekly.expected_purchases(91, *h))


def test_the_churn_inputs_carry_both_btyd_models_and_the_gaps_spread() -> None:
    cols = _members(300)
    rng = np.random.default_rng(4)
    cols["interpurchase_days_std"] = np.where(cols["orders_total"] > 2,
                                              rng.uniform(0, 60, 300), np.nan)
    cols |= {"orders_90d": cols["orders_365d"] / 2, "spend_90d_minor": cols["spend_365d_minor"]}
    models = {"bgnbd": WeeklyBtyd(BG), "pareto_nbd": WeeklyBtyd(PARETO)}
    got = inputs.churn_inputs(cols, models, 91)
    assert set(got) == set(inputs.CHURN_DERIVED)
    x, t_x, T = inputs.purchase_history(cols)
    known = np.isfinite(x)
    for family, model in models.items():
        want = model.p_purchase_within(91, x[known], t_x[known], T[known])
        np.testing.assert_array_equal(got[f"{family}_p_purchase"][known], want)
        assert np.isnan(got[f"{family}_expected_purchases"][~known]).all()
    cv = cols["interpurchase_days_std"] / cols["mean_interpurchase_days"]
    np.testing.assert_array_equal(got["interpurchase_cv"], cv)
    # a version asks only for what its trees read; a model it lacks is missing, not made up
    few = inputs.churn_inputs(cols, {"bgnbd": models["bgnbd"]}, 91,
                              ["pareto_nbd_p_purchase", "bgnbd_expected_purchases"])
    assert "bgnbd_p_alive" not in few and "interpurchase_cv" not in few
    assert np.isnan(few["pareto_nbd_p_purchase"]).all()
    np.testing.assert_array_equal(few["bgnbd_expected_purchases"],
                                  got["bgnbd_expected_purchases"])
