"""What scoring needs at serving time and training shares: calibration, the served BG/NBD,
and the classic churn scorers a churn version may serve instead of its trees.

The server process imports this, never `recsvc.offline.training` (which brings the evaluation
reports, plotting and scikit-learn along).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.ml import inputs
from recsvc.ml.btyd import BgNbd
from recsvc.ml.pareto_nbd import ParetoNbd

F64 = npt.NDArray[np.float64]


def calibrated(raw: Any, platt: Mapping[str, float]) -> Any:
    """Probabilities from raw margins with the Platt scaling fitted at training."""
    return sigmoid(platt["a"] * raw + platt["b"])


def sigmoid(z: Any) -> Any:
    """1 / (1 + e^-z) of an array, or of one float (a product page's one row, where numpy's
    per-call overhead costs more than the formula)."""
    if isinstance(z, float):  # math.exp raises past e^709 where numpy's gives inf (so 0)
        return 0.0 if z <= -709.0 else 1.0 / (1.0 + math.exp(-z))
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


class WeeklyBtyd:
    """A BTYD model (BG/NBD, Pareto/NBD) fitted in weeks, answering in days (the feature
    store's unit)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def p_alive(self, x: F64, t_x: F64, T: F64) -> F64:
        return np.asarray(self.model.p_alive(x, t_x / 7.0, T / 7.0), dtype=np.float64)

    def expected_purchases(self, t: float, x: F64, t_x: F64, T: F64) -> F64:
        return np.asarray(self.model.expected_purchases(t / 7.0, x, t_x / 7.0, T / 7.0),
                          dtype=np.float64)

    def p_purchase_within(self, t: float, x: F64, t_x: F64, T: F64) -> F64:
        return np.asarray(self.model.p_purchase_within(t / 7.0, x, t_x / 7.0, T / 7.0),
                          dtype=np.float64)

    def horizon_answers(self, t: float, x: F64, t_x: F64, T: F64) -> tuple[F64, F64]:
        """(p_purchase_within, expected_purchases) over the horizon t, in one pass."""
        within, expected = self.model.horizon_answers(t / 7.0, x, t_x / 7.0, T / 7.0)
        return np.asarray(within, dtype=np.float64), np.asarray(expected, dtype=np.float64)


def weekly_btyd(extra: Mapping[str, Any]) -> dict[str, WeeklyBtyd]:
    """The BTYD models a churn version was trained with (fitted at its last training cut-off),
    by family name, for serving the same derived inputs."""
    return {name: WeeklyBtyd(FAMILIES[name].from_dict(extra[f"{name}_weekly"]))
            for name in inputs.BTYD_FAMILIES if extra.get(f"{name}_weekly")}


def logit(p: F64, eps: float = 1e-6) -> F64:
    """Log-odds of probabilities, kept finite."""
    q = np.clip(p, eps, 1.0 - eps)
    return np.asarray(np.log(q / (1.0 - q)), dtype=np.float64)


@dataclass(frozen=True)
class LinearModel:
    """A logistic regression on imputed, standardised inputs (scikit-learn's median imputer,
    standard scaler and LogisticRegression, fitted at training), scored with numpy."""

    names: tuple[str, ...]
    fill: tuple[float, ...]  # the imputer's medians
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    @classmethod
    def from_pipeline(cls, names: tuple[str, ...], pipeline: Any) -> LinearModel:
        imputer, scaler, lr = (step for _, step in pipeline.steps)
        return cls(names, tuple(map(float, imputer.statistics_)), tuple(map(float, scaler.mean_)),
                   tuple(map(float, scaler.scale_)), tuple(map(float, lr.coef_[0])),
                   float(lr.intercept_[0]))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearModel:
        return cls(tuple(data["names"]), tuple(data["fill"]), tuple(data["mean"]),
                   tuple(data["scale"]), tuple(data["coef"]), float(data["intercept"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def contributions(self, X: F64) -> F64:
        """Each input's part of the log-odds, per row (they sum to the margin less the
        intercept)."""
        filled = np.where(np.isnan(X), np.asarray(self.fill), X)
        return (filled - np.asarray(self.mean)) / np.asarray(self.scale) * np.asarray(self.coef)

    def margin(self, X: F64) -> F64:
        return np.asarray(self.contributions(X).sum(axis=1) + self.intercept, dtype=np.float64)


TREES = ("lightgbm", "lightgbm_plain")
"""The churn model's own trees: boosted from BG/NBD's log-odds, or from a constant."""
RECENCY = "recency_only"
RFM_LOGISTIC = "rfm_logistic_regression"
BTYD = {  # name: (model, what of it)
    "bgnbd_p_no_purchase": ("bgnbd", "p_no_purchase"),
    "pareto_nbd_p_no_purchase": ("pareto_nbd", "p_no_purchase"),
    "bgnbd_expected_purchases": ("bgnbd", "expected_purchases"),
    "pareto_nbd_expected_purchases": ("pareto_nbd", "expected_purchases"),
    "bgnbd_p_alive": ("bgnbd", "p_alive"),
}
"""The classic models fitted on the purchase histories alone, each asked one question: they
answer any horizon."""
FAMILIES: dict[str, Any] = {"bgnbd": BgNbd, "pareto_nbd": ParetoNbd}
"""The BTYD models by the name BTYD gives them."""
CLASSIC = (RECENCY, RFM_LOGISTIC, *BTYD)
"""The classic churn scorers: every one competes with the trees, and serves if it wins."""
LOG_ODDS = (RFM_LOGISTIC, "bgnbd_p_no_purchase", "pareto_nbd_p_no_purchase")
"""The classic scores that are log-odds of churn; the others are monotone in it (the log of
the days since the last order, the log-odds of no purchase were the expected purchases
Poisson, of not alive), shaped so that Platt scaling calibrates them well."""


class ClassicChurn:
    """The classic churn scorers saved with a churn version (its `extra`), each as a score
    that is higher the likelier no purchase within the horizon (log-odds for those in
    LOG_ODDS, a monotone stand-in for the rest): one code path for training's candidates and
    serving."""

    def __init__(self, extra: Mapping[str, Any]) -> None:
        self.horizon = float(extra["horizon_days"])
        self.fallback = float(extra["prior_fallback"])
        saved = {"bgnbd": extra.get("bgnbd_weekly"), "pareto_nbd": extra.get("pareto_nbd_weekly")}
        # a version serving a BTYD model keeps it refitted on every history up to its as-of
        # date (training's candidates are the fits at the last training cut-off)
        served = BTYD.get(str(extra.get("served")))
        if served is not None and extra.get("served_btyd"):
            saved[served[0]] = extra["served_btyd"]
        self.btyd = {name: WeeklyBtyd(FAMILIES[name].from_dict(params))
                     for name, params in saved.items() if params}
        rfm = extra.get("rfm_logistic")
        self.rfm = LinearModel.from_dict(rfm) if rfm else None

    def margin(self, kind: str, cols: Mapping[str, Any]) -> tuple[F64, F64 | None]:
        """The churn score by `kind`, and each input's part of it where the model is additive
        (the RFM regression; None for the others)."""
        if kind == RECENCY:  # the log of days since the last order: Platt makes a power law
            return np.log1p(inputs.rfm_matrix(cols)[:, 0]), None
        if kind == RFM_LOGISTIC:
            if self.rfm is None:
                raise ValueError("this churn version has no RFM regression saved")
            contrib = self.rfm.contributions(inputs.rfm_matrix(cols))
            return contrib.sum(axis=1) + self.rfm.intercept, contrib
        name, question = BTYD.get(kind, (kind, ""))
        model = self.btyd.get(name)
        if model is None:
            raise ValueError(f"this churn version has no {kind!r} scorer saved")
        x, t_x, T = inputs.purchase_history(cols)
        if question == "expected_purchases":  # as log-odds of no purchase, were they Poisson
            got = inputs.over_history(x, t_x, T,
                                      lambda *h: model.expected_purchases(self.horizon, *h))
            return np.where(np.isfinite(got), logit(np.exp(-got)), self.fallback), None
        alive = (inputs.over_history(x, t_x, T, model.p_alive) if question == "p_alive" else
                 inputs.over_history(x, t_x, T,
                                     lambda *h: model.p_purchase_within(self.horizon, *h)))
        # a member with no order yet: no history to go on, the training base rate
        return np.where(np.isfinite(alive), logit(1.0 - alive), self.fallback), None
