"""Shared by the BTYD models' tests: a forward simulation's check of P(purchase within t)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats


def history_groups(x: np.ndarray, t_x: np.ndarray) -> dict[str, np.ndarray]:
    """Simulated customers selected on their history, from lapsed to active."""
    return {
        "no repeat": x == 0,
        "one, early": (x == 1) & (t_x < 10),
        "two, recent": (x == 2) & (t_x > 30),
        "five+, mid": (x >= 5) & (t_x > 15) & (t_x < 30),
        "five+, recent": (x >= 5) & (t_x > 35),
    }


def assert_matches_forward_simulation(model: Any, t: float, x: np.ndarray, t_x: np.ndarray,
                                      T: np.ndarray, bought: np.ndarray) -> None:
    """E[1{buys in (T, T+t]} | x, t_x, T] is the prediction, so within any group of simulated
    customers selected on their history the share who buy must match the mean prediction
    (within four standard errors)."""
    for name, sel in history_groups(x, t_x).items():
        predicted = float(np.mean(model.p_purchase_within(t, x[sel], t_x[sel], T[sel])))
        se = math.sqrt(predicted * (1 - predicted) / sel.sum())
        assert sel.sum() > 2_000, name
        assert abs(bought[sel].mean() - predicted) < 4 * se, (name, bought[sel].mean(), predicted)


def assert_recovers(truth: Any, simulate: Any, rel: dict[str, float]) -> None:
    """Fitted to a simulated CDNOW-like cohort (20,000 customers acquired over 12 weeks), the
    model finds the parameters it was simulated with, each within `rel` (relative)."""
    rng = np.random.default_rng(20_000)
    T = rng.uniform(27.0, 39.0, 20_000)
    x, t_x = simulate(truth, T, rng)
    fitted = type(truth).fit(x, t_x, T)
    assert fitted.fit_info is not None and fitted.fit_info.converged
    # the maximum-likelihood estimate can only beat the truth, and by a likelihood ratio
    # consistent with sampling noise (χ² with 4 degrees of freedom)
    ll_true = float(np.sum(truth.log_likelihood(x, t_x, T)))
    lr = 2 * (fitted.fit_info.log_likelihood - ll_true)
    assert 0 <= lr < stats.chi2.ppf(0.999, df=4)
    for name, tolerance in rel.items():
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=tolerance), name


def assert_round_trips_through_json(truth: Any, simulate: Any) -> None:
    """A model fitted to 500 simulated customers, and `truth` itself, come back equal from
    their JSON form (`to_dict` / `from_dict`, as a manifest stores them)."""
    rng = np.random.default_rng(1)
    T = np.full(500, 30.0)
    x, t_x = simulate(truth, T, rng)
    family = type(truth)
    fitted = family.fit(x, t_x, T)
    assert family.from_dict(json.loads(json.dumps(fitted.to_dict()))) == fitted
    assert family.from_dict(truth.to_dict()) == truth
