"""The fits: LightGBM boosters (here, or on Dask with early stopping that follows the validation
curve), Platt calibration, the logistic baseline, and the drivers and oracle scores a report
shows."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow.dataset as pads

from recsvc.data import schema
from recsvc.engine import Engine
from recsvc.offline.training_sets import PROPENSITY, TrainOptions

F64 = npt.NDArray[np.float64]

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


def top_drivers(booster: Any, X: F64, names: Sequence[str], rows: int = 5000) -> dict[str, float]:
    """Mean |pred_contrib| per input over a sample: the per-prediction drivers, summarised."""
    sample = X[:rows]
    contrib = np.asarray(booster.predict(sample, pred_contrib=True, num_threads=1))
    return {n: float(v) for n, v in zip(names, np.abs(contrib[:, :-1]).mean(0), strict=True)}


def oracle_scores(data_dir: Path, name: str, frame: pd.DataFrame) -> F64 | None:
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
