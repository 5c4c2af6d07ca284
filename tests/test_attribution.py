"""Path attribution: drivers that add up to the margin exactly, at a fraction of SHAP's cost."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from recsvc.ml.attribution import PathAttribution


def _model(rounds: int, seed: int = 0) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 8))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values take the split's default side
    y = (X[:, 0] + 2 * np.nan_to_num(X[:, 3]) + rng.normal(size=3000) > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 15, "seed": seed}
    return lgb.train(params, lgb.Dataset(X, y), rounds), X


def test_contributions_and_bias_add_up_to_the_raw_margin() -> None:
    booster, X = _model(60)
    attribution = PathAttribution(booster)
    got = attribution.contributions(X)
    assert got.shape == (len(X), 8)
    np.testing.assert_allclose(got.sum(axis=1) + attribution.bias,
                               booster.predict(X, raw_score=True), atol=1e-9)
    # the features the label depends on drive the predictions; noise features barely do
    weight = np.abs(got).mean(axis=0)
    assert set(np.argsort(-weight)[:2]) == {0, 3}
    # and they agree in sign with TreeSHAP where it is clear
    shap = booster.predict(X, pred_contrib=True)[:, :-1]
    clear = np.abs(shap[:, 3]) > 0.5
    assert (np.sign(got[clear, 3]) == np.sign(shap[clear, 3])).mean() > 0.95


def test_a_model_of_constant_trees() -> None:
    X = np.zeros((50, 3))
    y = np.r_[np.zeros(25), np.ones(25)]
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 3)
    attribution = PathAttribution(booster)
    assert np.all(attribution.contributions(X) == 0.0)
    np.testing.assert_allclose(attribution.bias, booster.predict(X[:1], raw_score=True)[0])


def test_each_row_is_its_leaves_table_rows_added_tree_by_tree() -> None:
    """The one-hot product adds what a loop over the trees adds, in the same order: the
    same numbers to the last bit (the drivers' ranking cannot move with the method)."""
    booster, X = _model(40, seed=3)
    attribution = PathAttribution(booster)
    leaves = booster.predict(X, pred_leaf=True).astype(np.int64)
    want = np.zeros((len(X), 8))
    for t, offset in enumerate(attribution.offsets):
        want += attribution.table[offset + leaves[:, t]]
    got = attribution.contributions(X)
    assert np.array_equal(got, want)
    assert attribution.contributions(X[:0]).shape == (0, 8)


class _NoDump:
    """A booster whose trees may not be walked again: tables must come from the cache."""

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster

    def dump_model(self) -> None:
        raise AssertionError("the tables were built again instead of read")

    def predict(self, *args: object, **kwargs: object) -> object:
        return self.booster.predict(*args, **kwargs)


def test_the_tables_are_kept_in_a_cache_file_and_read_back(tmp_path: Path) -> None:
    booster, X = _model(40)
    cache = tmp_path / "attribution.npz"
    built = PathAttribution(booster, cache=cache)
    assert cache.exists()
    read = PathAttribution(_NoDump(booster), cache=cache)  # type: ignore[arg-type]
    assert read.bias == built.bias
    np.testing.assert_array_equal(read.contributions(X), built.contributions(X))
    # a damaged file is not trusted: the tables are built again, and the file repaired
    cache.write_bytes(b"not an npz file")
    again = PathAttribution(booster, cache=cache)
    np.testing.assert_array_equal(again.contributions(X), built.contributions(X))
    assert PathAttribution(_NoDump(booster), cache=cache).bias == built.bias  # type: ignore[arg-type]
