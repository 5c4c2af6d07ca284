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
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow.dataset as pads

from recsvc.adapters.manifest import Manifest
from recsvc.adapters.registry import Registry
from recsvc.config import Programme
from recsvc.core import segments
from recsvc.core.ledger import US, instant
from recsvc.data import schema
from recsvc.engine import LOCAL, Engine
from recsvc.errors import DataMissing
from recsvc.ml import inputs
from recsvc.ml.btyd import BgNbd
from recsvc.ml.pareto_nbd import ParetoNbd
from recsvc.ml.runtime import (
    BTYD,
    CLASSIC,
    FAMILIES,
    LOG_ODDS,
    TREES,
    ClassicChurn,
    LinearModel,
    WeeklyBtyd,
    calibrated,
    sigmoid,
)
from recsvc.offline import evaluation
from recsvc.offline.compute import month_start_instants, week_start_instants
from recsvc.progress import Stopwatch

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
DAY = dt.timedelta(days=1)
PROPENSITY = "propensity"
CHURN = "churn"
SERVICES = {PROPENSITY: "propensity_v1", CHURN: "churn_v1"}
REDEEM_WINDOW = dt.timedelta(days=7)

# Why these defaults: a small learning rate with early stopping finds the number of trees by
# itself; 31 leaves and 100 rows per leaf keep trees from memorising single members; feature
# and row subsampling decorrelate trees; `deterministic` makes a seed reproduce the model.
LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": ["auc", "binary_logloss"],
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_cat_to_onehot": 8,
    "verbosity": -1,
    "deterministic": True,
    "force_col_wise": True,
}
MAX_ROUNDS = 2000
EARLY_STOPPING = 100

# Monotone constraints where the economics is clear (+1: never lowers the score).
MONOTONE = {
    PROPENSITY: {"value_coefficient": 1, "recommendation_index": 1},
    CHURN: {"days_since_last_order": 1, "bgnbd_expected_purchases": -1},
}


@dataclass(frozen=True)
class TrainOptions:
    as_of: dt.datetime | None = None
    """Only events before this instant are used (labels included). Default: end of the data."""
    horizon_days: int = 90
    """Churn label: no order in the next `horizon_days` after a cut-off."""
    min_history_days: int = 60
    """The first churn cut-off is this long after the first event, so features have history."""
    max_train_rows: int = 1_500_000
    """Propensity: older training exposures beyond this many are left out (memory, time)."""
    seed: int = 7
    num_threads: int = 0
    """LightGBM threads while training; 0 means all cores."""
    engine: Engine = LOCAL
    """Where LightGBM trains: here, or data-parallel over the partitions of a Dask cluster."""


@dataclass
class Split:
    """One training set split by time, with labels, model inputs and what the report needs."""

    frame: pd.DataFrame
    part: npt.NDArray[np.str_]  # "train" | "valid" | "test" per row
    label: npt.NDArray[np.int64]
    window: tuple[dt.datetime, dt.datetime]
    bounds: dict[str, str] = field(default_factory=dict)

    def rows(self, name: str) -> npt.NDArray[np.bool_]:
        return self.part == name


@dataclass(frozen=True)
class TrainResult:
    model: str
    manifest: Manifest
    report: Path
    test_metrics: dict[str, Any]
    seconds: float


# --------------------------------------------------------------------------------------------
# Labels and entity frames.
# --------------------------------------------------------------------------------------------
def _us(ts: pd.Series) -> npt.NDArray[np.int64]:
    return np.asarray(ts.astype("datetime64[us, UTC]").astype("int64"), dtype=np.int64)


def data_limit(data_dir: Path, as_of: dt.datetime | None) -> dt.datetime:
    """The instant nothing at or after which may be used: `as_of`, else the end of the data."""
    if as_of is not None:
        return as_of
    orders = schema.read_table(data_dir, "orders", ["ts"])
    if orders.num_rows == 0:
        raise DataMissing("no orders in the tables: nothing to train on")
    last = orders["ts"].to_pandas().max()
    return (last.floor("D") + pd.Timedelta(days=1)).to_pydatetime()


def split_cutoffs(
    cutoffs: Sequence[dt.datetime], horizon: dt.timedelta
) -> tuple[list[dt.datetime], dt.datetime, dt.datetime]:
    """(train cut-offs, validation cut-off, test cut-off) from those whose label is observable.

    Test is the last cut-off; validation the last one whose label window ends by the test
    cut-off; training those whose windows end by the validation cut-off. When the data is too
    short for such gaps (a log of a few months), the last three cut-offs become test,
    validation and the newest training cut-off, and the windows overlap (the report says so).
    """
    if len(cutoffs) < 3:
        raise DataMissing(
            f"need at least 3 cut-offs with an observable {horizon.days}-day label, "
            f"have {len(cutoffs)}: the data covers too short a period (try --horizon-days)"
        )
    test = cutoffs[-1]
    valid_candidates = [c for c in cutoffs if c + horizon <= test]
    valid = valid_candidates[-1] if valid_candidates else cutoffs[-2]
    train = [c for c in cutoffs if c + horizon <= valid]
    if not train:
        valid = cutoffs[-2]
        train = list(cutoffs[:-2])
    return train, valid, test


def churn_frame(
    data_dir: Path, limit: dt.datetime, opts: TrainOptions
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Members who had ordered before each weekly cut-off (`churn_cutoffs`), labelled 1 when
    they place no order in the label horizon after it; only cut-offs whose whole label
    window lies before `limit`, a member repeated across them. The label horizon is
    `horizon_days` where the history lets training, validation and test cut-offs lie a label
    window apart, else the longest of `fallback_horizons` that does, else the longest with
    three cut-offs at all (`bounds["horizon_days"]` says which, `bounds["note"]` why)."""
    orders = schema.read_table(data_dir, "orders", ["member_id", "ts"]).to_pandas()
    orders = orders[orders.ts < limit]
    if orders.empty:
        raise DataMissing("no orders before the as-of instant")
    first = orders.ts.min().to_pydatetime() + dt.timedelta(days=opts.min_history_days)
    # the horizon asked if its splits can be a label window apart (the test cut-off a month
    # start, else the last week start), else the longest shorter one whose can, else the
    # longest with three cut-offs at all (their windows overlap)
    tried = []
    for days in (opts.horizon_days, *fallback_horizons(opts.horizon_days)):
        horizon = dt.timedelta(days=days)
        span = (int(first.timestamp() * US), int((limit - horizon).timestamp() * US))
        tried += [(horizon, [instant(int(us)) for us in starts])
                  for starts in (churn_cutoffs(*span), week_start_instants(*span))]
        apart = [(h, c) for h, c in tried[-2:] if len(c) >= 3 and _apart(c, h)]
        if apart:
            horizon, cutoffs = apart[0]
            break
    else:
        usable = [(h, c) for h, c in tried if len(c) >= 3]
        if not usable:
            span_days = (limit - orders.ts.min().to_pydatetime()).days
            raise DataMissing(
                f"the orders before {limit:%Y-%m-%d} span {span_days} days: too short to "
                f"label churn at {opts.horizon_days} days or even 7 (a label needs "
                f"{opts.min_history_days} days of history, then three week starts whose "
                "windows end before the as-of date)")
        horizon, cutoffs = usable[0]
    train, valid, test = split_cutoffs(cutoffs, horizon)
    member = orders.member_id.to_numpy()
    ts = _us(orders.ts)
    order = np.lexsort((ts, member))
    member, ts = member[order], ts[order]
    key = (member << 40) | (ts // US)
    ids = np.unique(member)
    first_us = ts[np.searchsorted(member, ids)]
    frames = []
    for part, cuts in (("train", train), ("valid", [valid]), ("test", [test])):
        for c in cuts:
            c_us = int(c.timestamp() * US)
            who = ids[first_us < c_us]
            lo = np.searchsorted(key, (who << 40) | (c_us // US))
            end_s = (c_us // US) + int(horizon.total_seconds())
            hi = np.searchsorted(key, (who << 40) | end_s)
            frames.append(pd.DataFrame({
                "member_id": who,
                "event_timestamp": pd.Timestamp(c),
                "label": (hi == lo).astype(np.int64),
                "part": part,
            }))
    bounds = {"train": f"{train[0]:%Y-%m-%d} .. {train[-1]:%Y-%m-%d} ({len(train)} cut-offs)",
              "valid": f"{valid:%Y-%m-%d}", "test": f"{test:%Y-%m-%d}",
              "horizon_days": str(horizon.days)}
    if horizon.days != opts.horizon_days:
        bounds["note"] = (f"the history before {limit:%Y-%m-%d} is too short for labels at "
                          f"{opts.horizon_days} days: labelled at {horizon.days}")
    elif train[-1] + horizon > valid or valid + horizon > test:
        bounds["note"] = "label windows overlap between splits: the data is short"
    return pd.concat(frames, ignore_index=True), bounds


def whole_history(data_dir: Path, limit: dt.datetime) -> tuple[F64, F64, F64]:
    """Every buyer's BTYD statistics at `limit` from the orders before it, in days: repeat
    orders x, first to last order t_x, first order to `limit` T."""
    orders = schema.read_table(data_dir, "orders", ["member_id", "ts"]).to_pandas()
    orders = orders[orders.ts < limit]
    ts = _us(orders.ts).astype(np.float64) / (US * 86400.0)
    g = pd.DataFrame({"m": orders.member_id.to_numpy(), "t": ts}).groupby("m").t
    first, last, n = g.min().to_numpy(), g.max().to_numpy(), g.size().to_numpy()
    end = limit.timestamp() / 86400.0
    return (n - 1).astype(np.float64), last - first, end - first


def refit_btyd(kinds: Sequence[str], data_dir: Path, limit: dt.datetime) -> dict[str, Any]:
    """Each BTYD scorer's model (runtime.BTYD names) fitted on every purchase history up to
    `limit`, in weeks."""
    x, t_x, T = whole_history(data_dir, limit)
    return {kind: FAMILIES[BTYD[kind][0]].fit(x, t_x / 7.0, T / 7.0) for kind in kinds}


def churn_cutoffs(first_us: int, last_us: int) -> npt.NDArray[np.int64]:
    """The churn cut-offs in [first_us, last_us]: every week start up to the last month start,
    and that month start, which is the test cut-off (where the simulator's oracle is known,
    and a date a report reads as "the end of the month"); a span without a month start: the
    week starts alone."""
    weeks = week_start_instants(first_us, last_us)
    months = month_start_instants(first_us, last_us)
    if not len(months):
        return weeks
    return np.union1d(weeks[weeks <= months[-1]], months[-1:])


def _apart(cutoffs: Sequence[dt.datetime], horizon: dt.timedelta) -> bool:
    """Whether training, validation and test cut-offs can be a label window apart."""
    train, valid, test = split_cutoffs(cutoffs, horizon)
    return train[-1] + horizon <= valid and valid + horizon <= test


def fallback_horizons(days: int) -> list[int]:
    """The shorter label horizons tried, longest first, when the history has too few cut-offs
    for labels at `days`."""
    ladder = (days * 3 // 4, days // 2, days // 3, days // 4, 28, 14, 7)
    return sorted({d for d in ladder if 7 <= d < days}, reverse=True)


def propensity_frame(
    data_dir: Path, limit: dt.datetime, opts: TrainOptions
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Exposures whose 7-day window closed before `limit`, split by time with 7-day gaps."""
    exp = schema.read_table(
        data_dir, "exposures",
        ["exposure_id", "member_id", "item_id", "ts", "surface", "balance", "redeemed"],
    ).to_pandas()
    exp = exp[exp.ts + REDEEM_WINDOW <= limit]
    if len(exp) < 1000 or exp.redeemed.sum() < 50:
        raise DataMissing(
            f"only {len(exp):,} exposures ({int(exp.redeemed.sum()):,} redeemed) before the "
            "as-of instant: too few to train a propensity model (imported logs have none)"
        )
    t = exp.ts
    valid_start = t.quantile(0.70)
    test_start = t.quantile(0.85)
    part = np.where(t >= test_start, "test", np.where(t >= valid_start, "valid", "train"))
    gap = ((part == "train") & (t + REDEEM_WINDOW > valid_start)) | (
        (part == "valid") & (t + REDEEM_WINDOW > test_start))
    exp = exp.assign(part=part)[~gap]
    train = exp[exp.part == "train"]
    if len(train) > opts.max_train_rows:
        keep = train.sort_values("ts").index[-opts.max_train_rows:]
        exp = pd.concat([exp.loc[keep], exp[exp.part != "train"]])
    exp = exp.rename(columns={"ts": "event_timestamp", "redeemed": "label"})
    exp["label"] = exp.label.astype(np.int64)
    bounds = {"train": f"{exp[exp.part == 'train'].event_timestamp.min():%Y-%m-%d} .. "
                       f"{valid_start:%Y-%m-%d}",
              "valid": f"{valid_start:%Y-%m-%d} .. {test_start:%Y-%m-%d}",
              "test": f"{test_start:%Y-%m-%d} .. {limit - REDEEM_WINDOW:%Y-%m-%d}"}
    return exp.reset_index(drop=True), bounds


# --------------------------------------------------------------------------------------------
# Fitting.
# --------------------------------------------------------------------------------------------
def fit_booster(
    X: F64, y: npt.NDArray[np.int64], X_valid: F64, y_valid: npt.NDArray[np.int64],
    names: Sequence[str], categorical: Sequence[str], monotone: Mapping[str, int],
    opts: TrainOptions, init: F64 | None = None, init_valid: F64 | None = None,
) -> Any:
    import lightgbm as lgb

    params = dict(LGB_PARAMS, seed=opts.seed, num_threads=opts.num_threads or os.cpu_count() or 1)
    params["monotone_constraints"] = [monotone.get(n, 0) for n in names]
    params["monotone_constraints_method"] = "advanced"
    cats = [n for n in names if n in categorical]
    if opts.engine.distributed:
        return _fit_on_dask(opts.engine, params, X, y, X_valid, y_valid, names, cats, init,
                            init_valid)
    train = lgb.Dataset(X, y, feature_name=list(names), categorical_feature=cats,
                        init_score=init, free_raw_data=False)
    valid = lgb.Dataset(X_valid, y_valid, reference=train, init_score=init_valid)
    booster = lgb.train(
        params, train, num_boost_round=MAX_ROUNDS, valid_sets=[valid], valid_names=["valid"],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, first_metric_only=True, verbose=False)],
    )
    return booster


def _fit_on_dask(engine: Engine, params: dict[str, Any], X: F64, y: npt.NDArray[np.int64],
                 X_valid: F64, y_valid: npt.NDArray[np.int64], names: Sequence[str],
                 cats: list[str], init: F64 | None, init_valid: F64 | None) -> Any:
    """LightGBM trained data-parallel over row partitions on the Dask workers
    (`lightgbm.dask`), stopped where `lgb.early_stopping` would stop it.

    lightgbm.dask has no early stopping (each worker sees only its share of a validation set,
    and workers that stop apart hang: LightGBM issues #3712, #6351). So the validation AUC of
    every iteration is computed here, on the whole validation set, and the rule of the local
    fit applied to it: the best iteration, and the trees up to `EARLY_STOPPING` past it. A fit
    too short to show where that is runs again with twice the rounds (training is
    deterministic, so the first trees are the same)."""
    import lightgbm as lgb

    rows = max(1, -(-len(X) // engine.workers))  # one partition a worker
    data, label = _scattered(engine, X, rows), _scattered(engine, y, rows)
    offset = None if init is None else _scattered(engine, init, rows)
    local = {k: v for k, v in params.items() if k not in ("metric", "num_threads")}
    rounds = 2 * EARLY_STOPPING
    curve = EarlyStop(X_valid, y_valid, init_valid)
    while True:
        with engine.client.as_current(), warnings.catch_warnings():
            # each worker trains with its worker's threads: lightgbm.dask sets num_threads,
            # and warns of its own estimator's default n_jobs on every fit
            warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored")
            model = lgb.DaskLGBMClassifier(client=engine.client, n_estimators=rounds, **local)
            model.fit(data, label, init_score=offset, feature_name=list(names),
                      categorical_feature=cats)
        booster = model.booster_
        ended = rounds >= MAX_ROUNDS or booster.current_iteration() < rounds  # or no split
        stop = curve.where(booster, ended)
        if stop is not None:
            break
        rounds = min(2 * rounds, MAX_ROUNDS)
    trees, best = stop
    kept = lgb.Booster(model_str=booster.model_to_string(num_iteration=trees))
    kept.best_iteration = best
    return kept


def _scattered(engine: Engine, values: npt.NDArray[Any], rows: int) -> Any:
    """`values` as a Dask array of blocks of `rows` rows, each block sent to a worker once
    (rather than inside every task graph that uses it)."""
    import dask
    import dask.array as da

    blocks = [values[a:a + rows] for a in range(0, len(values), rows)]
    futures = engine.client.scatter(blocks)
    return da.concatenate([da.from_delayed(dask.delayed(f), shape=b.shape, dtype=b.dtype)
                           for f, b in zip(futures, blocks, strict=True)])


class EarlyStop:
    """`lgb.early_stopping(EARLY_STOPPING)`'s rule on the validation AUC, applied by the caller
    to fits that each extend the last (training is deterministic, so a longer fit's first trees
    are the shorter fit's): the curve is followed from the first tree not yet seen."""

    def __init__(self, X_valid: F64, y_valid: npt.NDArray[np.int64], init_valid: F64 | None):
        self.X, self.y = X_valid, y_valid
        self.raw = (np.zeros(len(X_valid)) if init_valid is None
                    else np.array(init_valid, dtype=float))
        self.best, self.best_at, self.seen = -np.inf, 0, 0

    def where(self, booster: Any, last: bool) -> tuple[int, int] | None:
        """(trees to keep, best iteration) where the rule stops a fit that trained `booster`'s
        trees; None if it would go on (`last`: no more rounds may be trained, so it stops at
        the end)."""
        from sklearn.metrics import roc_auc_score

        total = booster.current_iteration()
        for k in range(self.seen, total):
            self.raw += booster.predict(self.X, raw_score=True, start_iteration=k,
                                        num_iteration=1, num_threads=1)
            self.seen = k + 1
            auc = roc_auc_score(self.y, self.raw)
            if auc > self.best:
                self.best, self.best_at = auc, k
            elif k - self.best_at >= EARLY_STOPPING:
                return k + 1, self.best_at + 1
        return (total, self.best_at + 1) if last else None


def margin(booster: Any, X: F64, init: F64 | None = None) -> F64:
    """The model's log-odds: the trees' raw score plus the prior it was boosted from."""
    raw = np.asarray(booster.predict(X, raw_score=True, num_threads=1), dtype=np.float64)
    return raw if init is None else raw + init


def fit_platt(raw: F64, y: npt.NDArray[np.int64]) -> dict[str, float]:
    """Platt scaling p = sigmoid(a·raw + b), fitted by scikit-learn on validation scores."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(raw.reshape(-1, 1), y)
    return {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}


def logistic_baseline(X: F64, y: npt.NDArray[np.int64]) -> Any:
    """Logistic regression (median imputation, standardised) on the given columns."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                          StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(X, y)
    return model


def _drivers(booster: Any, X: F64, names: Sequence[str], rows: int = 5000) -> dict[str, float]:
    """Mean |pred_contrib| per input over a sample: the per-prediction drivers, summarised."""
    sample = X[:rows]
    contrib = np.asarray(booster.predict(sample, pred_contrib=True, num_threads=1))
    return {n: float(v) for n, v in zip(names, np.abs(contrib[:, :-1]).mean(0), strict=True)}


def _oracle_scores(data_dir: Path, name: str, frame: pd.DataFrame) -> F64 | None:
    """The simulator's true probabilities for the rows of `frame`, if the data has an oracle."""
    path = schema.oracle_dir(data_dir) / ("exposures" if name == PROPENSITY else "churn")
    if not path.exists():
        return None
    table = pads.dataset(path, format="parquet").to_table().to_pandas()
    if name == PROPENSITY:
        got = frame[["exposure_id"]].merge(table, on="exposure_id", how="left").p_redeem_7d
    else:
        table = table.rename(columns={"ts": "event_timestamp"})
        got = frame[["member_id", "event_timestamp"]].merge(
            table, on=["member_id", "event_timestamp"], how="left").p_no_order_90d
    values = got.to_numpy(dtype=np.float64)
    return None if np.isnan(values).any() else values


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
    at = _us(split.frame.event_timestamp)
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
                  (instant(int(_us(feats.event_timestamp).min())), limit), bounds)
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
    oracle = _oracle_scores(data_dir, name, feats[te])
    test_scorers = {k: v[te] for k, v in scorers.items()}
    if oracle is not None:
        test_scorers["oracle"] = oracle
    metrics = _metrics(valid_eval["scorers"]["served" if "served" in scorers else "lightgbm"])
    baseline_metrics = {b: _metrics(valid_eval["scorers"][b]) for b in prep.baselines}
    booster = served.booster  # the trees that serve, or those kept beside a classic scorer
    importance = dict(zip(prep.names, booster.feature_importance("gain").tolist(), strict=True))
    drivers = _drivers(booster, prep.X[te], prep.names)
    with tempfile.TemporaryDirectory() as tmp:
        files = evaluation.write_report(
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
    "CHURN", "PROPENSITY", "SERVICES", "TrainOptions", "TrainResult", "split_cutoffs",
    "train_model",
]
