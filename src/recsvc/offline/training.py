"""Training jobs: point-in-time training sets from Feast, LightGBM fits, baselines, registration.

Both models are trained the same way:

1. an entity frame (exposures for propensity; members × cut-off instants for churn) with labels
   computed from the canonical tables, split by time into train / validation / test with a gap
   of one label window between splits, so no training label looks into a later split;
2. features through Feast's `get_historical_features` with the model's feature service, plus
   the derived inputs of `recsvc.ml.inputs` (the index factors, BG/NBD expectations);
3. LightGBM with early stopping on validation, monotone constraints where the economics is
   clear, no re-weighting of classes (log loss on the true base rate keeps probabilities
   honest), then Platt scaling fitted on validation. Churn boosts from BG/NBD's log-odds
   instead of a constant, so its trees are corrections to the classic model, and BG/NBD's
   structure carries over to cohorts and tenures the training cut-offs never showed;
4. baselines on the same splits, the report, and registration; promotion is the caller's call.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsvc.adapters.manifest import Manifest
from recsvc.adapters.registry import Registry
from recsvc.config import Programme
from recsvc.core import segments
from recsvc.core.ledger import US, instant
from recsvc.ml import inputs
from recsvc.ml.btyd import BgNbd
from recsvc.ml.pareto_nbd import ParetoNbd
from recsvc.ml.runtime import (
    BTYD,
    CLASSIC,
    LOG_ODDS,
    TREES,
    ClassicChurn,
    LinearModel,
    WeeklyBtyd,
    calibrated,
    sigmoid,
)
from recsvc.offline import evaluation, evaluation_report
from recsvc.offline.fitting import (
    fit_booster,
    fit_platt,
    logistic_baseline,
    margin,
    oracle_scores,
    top_drivers,
)
from recsvc.offline.training_sets import (
    CHURN,
    PROPENSITY,
    Split,
    TrainOptions,
    churn_frame,
    data_limit,
    micros,
    propensity_frame,
    refit_btyd,
)
from recsvc.progress import Stopwatch

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
DAY = dt.timedelta(days=1)
SERVICES = {PROPENSITY: "propensity_v1", CHURN: "churn_v1"}


# Monotone constraints where the economics is clear (+1: never lowers the score).
MONOTONE = {
    PROPENSITY: {"value_coefficient": 1, "recommendation_index": 1},
    CHURN: {"days_since_last_order": 1, "bgnbd_expected_purchases": -1},
}


@dataclass(frozen=True)
class TrainResult:
    model: str
    manifest: Manifest
    report: Path
    test_metrics: dict[str, Any]
    seconds: float


# --------------------------------------------------------------------------------------------
# The two models.
# --------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    names: list[str]
    derived: list[str]
    X: F64
    extra: dict[str, Any]
    baselines: dict[str, F64]  # scores per row (all splits), higher = more likely positive
    baseline_probabilistic: list[str]
    init: F64 | None = None  # the margin boosting starts from, per row
    candidates: dict[str, F64] = field(default_factory=dict)  # margins that may serve instead


def _prepare_propensity(cols: dict[str, Any], split: Split, programme: Programme) -> _Prepared:
    # the live balance when the item was shown, as callers pass it at request time
    cols["points_balance"] = np.where(np.isfinite(cols["balance"]), cols["balance"],
                                      cols["points_balance"])
    cols.update(inputs.index_inputs(cols, programme))
    names = list(inputs.PROPENSITY_INPUTS)
    vocab = inputs.vocabularies({k: cols[k] for k in inputs.CATEGORICAL if k in cols})
    vocab["surface"] = list(inputs.SURFACES)
    X = inputs.matrix(cols, names, vocab)
    train = split.rows("train")
    lr_cols = [names.index(n) for n in names if n not in vocab]
    lr = logistic_baseline(X[train][:, lr_cols], split.label[train])
    since = np.nan_to_num(cols["days_since_last_order"], nan=1e6)
    baselines = {
        "index_rule": (cols["recommendation_index"] > programme.index.hint_threshold).astype(float),
        "recency_only": -since,
        "logistic_regression": lr.predict_proba(X[:, lr_cols])[:, 1],
    }
    extra = {"vocabularies": vocab, "hint_threshold": programme.index.hint_threshold}
    return _Prepared(names, [*inputs.REQUEST_TIME, *inputs.INDEX_DERIVED], X, extra, baselines,
                     ["logistic_regression"])


def _prepare_churn(cols: dict[str, Any], split: Split, opts: TrainOptions) -> _Prepared:
    train = split.rows("train")
    x, t_x, T = inputs.purchase_history(cols)
    ok = train & np.isfinite(x) & np.isfinite(T) & (T > 0)
    # BG/NBD on the latest training cut-off only: one history per member, as the model assumes
    last = split.frame.event_timestamp.to_numpy() == split.frame.event_timestamp[train].max()
    ok &= last
    bgnbd = BgNbd.fit(x[ok], t_x[ok] / 7.0, T[ok] / 7.0)  # time in weeks, as usual
    pareto = WeeklyBtyd(ParetoNbd.fit(x[ok], t_x[ok] / 7.0, T[ok] / 7.0))
    weekly = WeeklyBtyd(bgnbd)

    cols.update(inputs.churn_inputs(cols, {"bgnbd": weekly, "pareto_nbd": pareto},
                                    opts.horizon_days))
    names = list(inputs.CHURN_INPUTS)
    vocab = inputs.vocabularies({k: cols[k] for k in inputs.CATEGORICAL if k in cols})
    X = inputs.matrix(cols, names, vocab)
    rfm = inputs.rfm_matrix(cols)
    lr = LinearModel.from_pipeline(inputs.RFM_INPUTS, logistic_baseline(rfm[train],
                                                                        split.label[train]))
    buyers = train & np.isfinite(cols["days_since_last_order"])
    rfm_thresholds = segments.fit_rfm_thresholds(
        cols["days_since_last_order"][buyers], cols["orders_365d"][buyers],
        cols["spend_365d_minor"][buyers])
    rate = float(np.clip(split.label[train].mean(), 1e-4, 1 - 1e-4))
    fallback = float(np.log(rate / (1 - rate)))
    extra = {"vocabularies": vocab, "bgnbd_weekly": bgnbd.to_dict(),
             "pareto_nbd_weekly": pareto.model.to_dict(), "rfm_logistic": lr.to_dict(),
             "horizon_days": opts.horizon_days, "rfm_thresholds": rfm_thresholds.to_dict(),
             "band_cuts": list(segments.DEFAULT_BAND_CUTS), "prior_fallback": fallback}
    # the classic models, among them BG/NBD and Pareto/NBD asked the caller's question (no
    # purchase within the horizon), scored exactly as a version serving one of them would
    classic = ClassicChurn(extra)
    candidates = {kind: classic.margin(kind, cols)[0] for kind in CLASSIC}
    baselines = {kind: sigmoid(score) if kind in LOG_ODDS else score
                 for kind, score in candidates.items()}
    return _Prepared(names, list(inputs.CHURN_DERIVED), X, extra, baselines, list(LOG_ODDS),
                     inputs.churn_prior_margin(cols, fallback), candidates)


@dataclass(frozen=True)
class _Served:
    """What a new version serves: the candidate that ranked validation best."""

    name: str
    booster: Any
    platt: dict[str, float]
    probability: F64  # every row's, calibrated
    candidates: dict[str, float]  # validation ROC-AUC of each candidate


def _compete(prep: _Prepared, split: Split, booster: Any, opts: TrainOptions,
             say: Callable[[str], None], *, trees: bool = True,
             ) -> tuple[_Served, dict[str, F64]]:
    """The candidates on the validation split, each calibrated there: the trees boosted from
    the prior, and (churn) the trees boosted from a constant and every classic model alone.

    Which serves: the one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani and
    Friedman, ESL 7.10), the standard error of a difference in validation ROC-AUC taken from
    paired bootstrap resamples. Of the two tree variants, the one boosted from the prior
    unless the other ranks validation better by more than one standard error; then those
    trees only if they rank validation better than the best classic model by more than one
    standard error too, else that classic model, the simpler one. On a log a classic process
    describes, the classic model is as good as anything learnt from the same histories, and
    the trees' edge of a few thousandths on one validation cut-off is noise the test split
    does not repeat. Either way nothing that serves ranks validation below a classic model.
    `trees=False`: only the classic candidates may serve (the labels could not reach the
    horizon asked for). Also every tree variant's calibrated probabilities, for the report."""
    from sklearn.metrics import roc_auc_score

    tr, va = split.rows("train"), split.rows("valid")
    boosters = {"lightgbm": booster}
    margins = {"lightgbm": margin(booster, prep.X, prep.init)}
    if prep.candidates:
        plain = fit_booster(prep.X[tr], split.label[tr], prep.X[va], split.label[va],
                            prep.names, inputs.CATEGORICAL, MONOTONE[CHURN], opts)
        boosters["lightgbm_plain"] = plain
        margins["lightgbm_plain"] = margin(plain, prep.X)
        margins.update(prep.candidates)
    platts = {k: fit_platt(m[va], split.label[va]) for k, m in margins.items()}
    probs = {k: calibrated(m, platts[k]) for k, m in margins.items()}
    valid = {k: p[va] for k, p in probs.items()}
    aucs = {k: float(roc_auc_score(split.label[va], p)) for k, p in valid.items()}
    classic = max(prep.candidates, key=lambda k: aucs[k]) if prep.candidates else None
    # resampled only for the comparisons made (the resamples do not depend on which)
    compared = [*boosters, *([classic] if classic else [])]
    samples = (evaluation.bootstrap_auc(split.label[va], {k: valid[k] for k in compared},
                                        seed=opts.seed) if len(compared) > 1 else {})

    def edge(a: str, b: str) -> tuple[float, float]:
        """a's validation ROC-AUC less b's, and its standard error."""
        diff = samples[a] - samples[b]
        return aucs[a] - aucs[b], float(np.std(diff[np.isfinite(diff)]))

    def clearly_better(a: str, b: str) -> bool:
        gain, se = edge(a, b)
        return gain > se

    best = "lightgbm"
    if "lightgbm_plain" in aucs and clearly_better("lightgbm_plain", best):
        best = "lightgbm_plain"
    if classic is not None:
        gain, se = edge(best, classic)
        say(f"{best} vs {classic} on validation: {gain:+.4f} ± {se:.4f} (1 SE, bootstrap)")
        if not trees or not clearly_better(best, classic):
            best = classic
    if len(aucs) > 1:
        say("candidates (validation ROC-AUC): " + ", ".join(
            f"{k} {v:.4f}" for k, v in sorted(aucs.items(), key=lambda kv: -kv[1]))
            + f"; serving {best}")
    served = _Served(best, boosters.get(best, booster), platts[best], probs[best], aucs)
    return served, {k: probs[k] for k in boosters}


def earlier_split(split: Split, horizon: dt.timedelta) -> Split | None:
    """The training rows split again one label window earlier, as training, validation and
    test are: validation at the last training cut-off, training at the cut-offs whose label
    windows end by it. None when no cut-off is that early."""
    at = micros(split.frame.event_timestamp)
    cuts = np.unique(at[split.rows("train")])
    if len(cuts) < 2:
        return None
    valid = cuts[-1]
    train = cuts[cuts + int(horizon.total_seconds()) * US <= valid]
    if not len(train):
        return None
    part = np.where(np.isin(at, train), "train", np.where(at == valid, "valid", "unused"))
    bounds = {"train": f"{instant(int(train[0])):%Y-%m-%d} .. {instant(int(train[-1])):%Y-%m-%d} "
                       f"({len(train)} cut-offs)", "valid": f"{instant(int(valid)):%Y-%m-%d}"}
    return Split(split.frame, part, split.label, split.window, bounds)


def _earlier_fold(cols: dict[str, Any], split: Split, opts: TrainOptions,
                  say: Callable[[str], None]) -> dict[str, Any] | None:
    """The churn competition run again on `earlier_split` (every model refitted on its own
    training cut-offs): what would serve there, and each candidate's validation ROC-AUC.

    One validation cut-off judges one season: on a log with a yearly cycle the trees won a
    December validation by more than a standard error and lost the April test to Pareto/NBD.
    The trees serve only when they also win a fold one label window earlier."""
    earlier = earlier_split(split, dt.timedelta(days=opts.horizon_days))
    if earlier is None:
        say("churn: no cut-off a label window before the validation one: one fold decides")
        return None
    tell = functools.partial(_prefixed, say,
                             f"churn, earlier fold (valid {earlier.bounds['valid']})")
    prep = _prepare_churn(dict(cols), earlier, opts)
    tr, va = earlier.rows("train"), earlier.rows("valid")
    booster = fit_booster(prep.X[tr], earlier.label[tr], prep.X[va], earlier.label[va],
                          prep.names, inputs.CATEGORICAL, MONOTONE[CHURN], opts,
                          prep.init[tr] if prep.init is not None else None,
                          prep.init[va] if prep.init is not None else None)
    served, _ = _compete(prep, earlier, booster, opts, tell)
    return {**earlier.bounds, "served": served.name, "candidates": served.candidates}


def _prefixed(say: Callable[[str], None], prefix: str, line: str) -> None:
    say(f"{prefix}: {line}")


def train_model(
    name: str,
    data_dir: Path,
    programme: Programme,
    history: Callable[[str, pd.DataFrame], pd.DataFrame],
    registry: Registry,
    opts: TrainOptions,
    *,
    data_fingerprint: str,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Build the training set, fit, evaluate against baselines and register a new version."""
    watch = Stopwatch()
    limit = data_limit(data_dir, opts.as_of)
    frame, bounds = (propensity_frame if name == PROPENSITY else churn_frame)(
        data_dir, limit, opts)
    say(f"{name}: {len(frame):,} rows ({int(frame.label.sum()):,} positive) up to "
        f"{limit:%Y-%m-%d}; train {bounds['train']}, valid {bounds['valid']}, "
        f"test {bounds['test']}")
    step = Stopwatch()
    service = SERVICES[name]
    feats = inputs.with_features(history, service, frame)
    say(f"{name}: point-in-time features from {service!r} in {step.seconds:.1f} s")
    split = Split(feats, feats.part.to_numpy(), feats.label.to_numpy().astype(np.int64),
                  (instant(int(micros(feats.event_timestamp).min())), limit), bounds)
    cols = inputs.frame_columns(feats)
    # a history too short for labels at the horizon asked for: everything is fitted and
    # validated at the label horizon, and only a BTYD model, which answers any horizon, serves
    label_days = int(bounds.get("horizon_days", opts.horizon_days))
    short = name == CHURN and label_days != opts.horizon_days
    prep = (_prepare_propensity(cols, split, programme) if name == PROPENSITY
            else _prepare_churn(cols, split, replace(opts, horizon_days=label_days)))
    refits: dict[str, Any] = {}  # BTYD models fitted on every history up to `limit`
    if short:  # BG/NBD or Pareto/NBD, whichever is likelier on every history, answers
        refits = refit_btyd([k for k in prep.candidates if k in BTYD and k in LOG_ODDS],
                            data_dir, limit)
        likeliest = max(refits, key=lambda k: refits[k].fit_info.log_likelihood)
        prep.candidates = {likeliest: prep.candidates[likeliest]}
    tr, va, te = split.rows("train"), split.rows("valid"), split.rows("test")
    step = Stopwatch()
    init = prep.init
    booster = fit_booster(prep.X[tr], split.label[tr], prep.X[va], split.label[va], prep.names,
                          inputs.CATEGORICAL, MONOTONE[name], opts,
                          None if init is None else init[tr], None if init is None else init[va])
    say(f"{name}: LightGBM {booster.best_iteration} trees on {int(tr.sum()):,} rows in "
        f"{step.seconds:.1f} s")
    may_serve_trees = not short
    if name == CHURN and not short:  # the trees must also win a fold one label window earlier
        earlier = _earlier_fold(cols, split, replace(opts, horizon_days=label_days), say)
        if earlier is not None:
            prep.extra["earlier_fold"] = earlier
            may_serve_trees = earlier["served"] in TREES
    served, trees = _compete(prep, split, booster, opts, say, trees=may_serve_trees)
    calibration = served.platt
    if served.name in BTYD:  # serves refitted on every purchase history up to the as-of date
        if served.name not in refits:
            refits |= refit_btyd([served.name], data_dir, limit)
        prep.extra["served_btyd"] = refits[served.name].to_dict()
    if short:  # calibrated at the label horizon, so served as the model's own probability
        prep.extra.update(horizon_days=opts.horizon_days, label_horizon_days=label_days)
        calibration = {"a": 1.0, "b": 0.0}
        likelihoods = ", ".join(f"{k} {m.fit_info.log_likelihood:,.0f}"
                                for k, m in refits.items())
        say(f"{name}: {bounds['note']}; serving {served.name} at {opts.horizon_days} days, "
            f"refitted on every history up to then: a BTYD model answers any horizon, and of "
            f"the two it is the likelier (log-likelihood {likelihoods})")
    scorers = {**trees, **prep.baselines}
    probabilistic = [*trees, *prep.baseline_probabilistic]
    if len(served.candidates) > 1:  # what serves, beside what competed
        scorers, probabilistic = {"served": served.probability, **scorers}, ["served",
                                                                             *probabilistic]
    valid_eval = evaluation.evaluate(split.label[va], {k: v[va] for k, v in scorers.items()},
                                     baselines=list(prep.baselines), probabilistic=probabilistic,
                                     resamples=0)  # the gate reads the point metrics only
    oracle = oracle_scores(data_dir, name, feats[te])
    test_scorers = {k: v[te] for k, v in scorers.items()}
    if oracle is not None:
        test_scorers["oracle"] = oracle
    metrics = _metrics(valid_eval["scorers"]["served" if "served" in scorers else "lightgbm"])
    baseline_metrics = {b: _metrics(valid_eval["scorers"][b]) for b in prep.baselines}
    booster = served.booster  # the trees that serve, or those kept beside a classic scorer
    importance = dict(zip(prep.names, booster.feature_importance("gain").tolist(), strict=True))
    drivers = top_drivers(booster, prep.X[te], prep.names)
    with tempfile.TemporaryDirectory() as tmp:
        files = evaluation_report.write_report(
            tmp, split.label[te], test_scorers, title=f"{name} model (test split)",
            baselines=list(prep.baselines), oracle="oracle" if oracle is not None else None,
            probabilistic=[*probabilistic, *(["oracle"] if oracle is not None else [])],
            training_window=(split.window[0].isoformat(), split.window[1].isoformat()),
            data_sizes={"train": int(tr.sum()), "valid": int(va.sum()), "test": int(te.sum())},
            importance=importance, drivers=drivers,
            notes=[f"{k}: {v}" for k, v in bounds.items()]
            + ([f"earlier fold (valid {prep.extra['earlier_fold']['valid']}): "
                f"{prep.extra['earlier_fold']['served']} would serve"]
               if "earlier_fold" in prep.extra else [])
            + [f"served: {served.name} (validation ROC-AUC "
               + ", ".join(f"{k} {v:.4f}" for k, v in served.candidates.items()) + ")",
               f"trees: {booster.best_iteration}; Platt a={served.platt['a']:.4f} "
               f"b={served.platt['b']:.4f}"],
            extra={"validation": metrics, "served": served.name},
        )
        test_eval = json.loads(Path(files.metrics_json).read_text())["evaluation"]
        manifest = registry.register(
            name, booster, feature_service=service, training_window=split.window,
            data_fingerprint=data_fingerprint, metrics=metrics, baseline_metrics=baseline_metrics,
            features=prep.names, derived_features=prep.derived,
            extra={**prep.extra, "calibration": {"platt": calibration}, "split": bounds,
                   "served": served.name, "candidates": served.candidates,
                   "test": _headline(test_eval)},
            report_dir=tmp,
        )
    result = TrainResult(name, manifest, registry.report_dir(name, manifest.version),
                         _headline(test_eval), watch.seconds)
    say(f"{name}: registered {manifest.version}; test " + _summary(result.test_metrics))
    return result


def _metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The finite headline metrics of one scorer's evaluation entry."""
    return {k: float(v) for k, v in entry.items() if k in evaluation.METRIC_LABELS
            and isinstance(v, int | float) and math.isfinite(v)}


def _headline(test_eval: Mapping[str, Any]) -> dict[str, Any]:
    """Test ROC-AUC and PR-AUC of every scorer, the best baseline and the gap to the oracle."""
    scorers = test_eval.get("scorers", test_eval)
    out: dict[str, Any] = {}
    for name, info in scorers.items():
        m = info.get("metrics", info) if isinstance(info, Mapping) else {}
        if isinstance(m, Mapping) and "roc_auc" in m:
            out[name] = {k: m[k] for k in ("roc_auc", "pr_auc", "log_loss", "brier")
                         if k in m and m[k] is not None}
    return out


def _summary(headline: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} AUC {v['roc_auc']:.4f}" for k, v in headline.items())


__all__ = [
    "CHURN", "PROPENSITY", "SERVICES", "TrainOptions", "TrainResult",
    "train_model",
]
