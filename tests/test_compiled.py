"""The lleaves-compiled predictor equals LightGBM, reuses its cache and falls back safely."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

lgb = pytest.importorskip("lightgbm")
pytest.importorskip("lleaves")

from recsvc.adapters.compiled import CompiledLeaves, CompiledModel  # noqa: E402
from recsvc.ml.model_text import probe_rows  # noqa: E402

ROWS = 4000
FEATURES = ["num_a", "num_b", "tier", "num_c", "category", "dense"]
CATEGORICAL = [2, 4]


def _data(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    X = rng.normal(size=(n, len(FEATURES)))
    X[:, 2] = rng.integers(0, 4, n)  # few categories: one-hot splits (max_cat_to_onehot 8)
    X[:, 4] = rng.integers(0, 20, n)  # many: bitset splits
    missing = rng.random((n, len(FEATURES))) < 0.1
    missing[:, 5] = False  # one column never missing in training: NaN then means 0.0
    X[missing] = np.nan
    return X


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, np.ndarray]:
    rng = np.random.default_rng(11)
    X = _data(rng, ROWS)
    logit = (np.nan_to_num(X[:, 0]) + np.isin(X[:, 4], [1, 3, 5, 7]) - (X[:, 2] == 2)
             + np.where(np.isnan(X[:, 1]), 1.0, 0.0) + 0.5 * X[:, 5] ** 2)
    y = (logit + rng.normal(size=ROWS) > 0.7).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 20,
              "max_cat_to_onehot": 8, "num_threads": 1, "verbosity": -1, "seed": 1,
              "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(X, y, feature_name=FEATURES,
                                            categorical_feature=CATEGORICAL), 20)
    path = tmp_path_factory.mktemp("compiled") / "model.txt"
    booster.save_model(str(path))
    return path, booster, X


def _inputs(X: np.ndarray) -> np.ndarray:
    """Training rows plus the awkward ones: unseen and negative codes, NaN everywhere, a
    fractional code, values LightGBM reads as zero."""
    extra = np.array([
        [np.nan] * 6,
        [0.0, 0.0, 99.0, 0.0, 99.0, np.nan],
        [1.0, -1.0, -1.0, 2.0, -3.0, 0.5],
        [0.3, 1e-36, 2.5, -1e-36, 4.7, -0.0],
        [-2.0, 2.0, 3.0, np.nan, 19.0, 1e-300],
    ])
    return np.vstack([X, extra])


def test_margins_and_probabilities_equal_lightgbm(model, tmp_path: Path) -> None:
    path, booster, X = model
    compiled = CompiledModel(path, tmp_path / "cache", booster=booster)
    assert compiled.compiled and compiled.fallback_reason is None
    data = _inputs(X)
    want_raw = booster.predict(data, raw_score=True, num_threads=1)
    np.testing.assert_allclose(compiled.predict_raw(data), want_raw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(compiled.predict_proba(data), booster.predict(data),
                               rtol=0, atol=1e-6)
    # the split points themselves, and beside them
    probe = probe_rows(path.read_text(), len(FEATURES), rows=2000, seed=3)
    np.testing.assert_allclose(compiled.predict_raw(probe),
                               booster.predict(probe, raw_score=True), rtol=0, atol=1e-6)
    # single rows, float32 input, all-threads batches: the same numbers
    np.testing.assert_allclose(compiled.predict_raw(data[:1]), want_raw[:1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(compiled.predict_raw(data.astype(np.float32)),
                               booster.predict(data.astype(np.float32), raw_score=True),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(compiled.predict_raw(data, num_threads=0), want_raw,
                               rtol=0, atol=1e-6)
    # one row at a time (a product page's hint), the awkward rows included
    one_by_one = [compiled.predict_one(np.ascontiguousarray(row)) for row in data]
    np.testing.assert_allclose(one_by_one, want_raw, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one row"):
        compiled.predict_one(data[0, :3].copy())
    # Booster.predict's signature, as the scorers call it
    np.testing.assert_allclose(compiled.predict(data, raw_score=True, num_threads=2), want_raw,
                               rtol=0, atol=1e-6)
    contrib = compiled.predict(data[:5], pred_contrib=True)
    assert contrib.shape == (5, len(FEATURES) + 1)
    with pytest.raises(ValueError, match="columns"):
        compiled.predict_raw(data[:, :3])


def test_safe_from_several_threads(model, tmp_path: Path) -> None:
    path, booster, X = model
    compiled = CompiledModel(path, tmp_path / "cache", booster=booster)
    want = booster.predict(X, raw_score=True)
    errors: list[float] = []

    def work(seed: int) -> None:
        rows = np.random.default_rng(seed).integers(0, len(X), 50)
        for _ in range(50):
            errors.append(float(np.abs(compiled.predict_raw(X[rows]) - want[rows]).max()))
            one = rows[0]  # each thread's own buffers: no row is scored with another's
            errors.append(abs(compiled.predict_one(X[one].copy()) - want[one]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 400 and max(errors) <= 1e-6


def test_cache_is_reused_not_recompiled(model, tmp_path: Path) -> None:
    path, booster, X = model
    first = CompiledModel(path, tmp_path / "cache", booster=booster)
    assert first.compiled_now and first.cache_path is not None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.cache_path.parent.name == sha  # keyed by the model file's SHA-256
    stamp = first.cache_path.stat().st_mtime_ns
    second = CompiledModel(path, tmp_path / "cache", booster=booster)
    assert second.compiled and not second.compiled_now
    assert second.cache_path == first.cache_path
    assert second.cache_path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.predict_raw(X), first.predict_raw(X))


def test_damaged_cache_is_recompiled(model, tmp_path: Path) -> None:
    path, booster, X = model
    first = CompiledModel(path, tmp_path / "cache", booster=booster)
    assert first.cache_path is not None
    first.cache_path.write_bytes(first.cache_path.read_bytes()[:100])  # truncated
    again = CompiledModel(path, tmp_path / "cache", booster=booster)
    assert again.compiled and again.compiled_now
    np.testing.assert_allclose(again.predict_raw(X), booster.predict(X, raw_score=True),
                               rtol=0, atol=1e-6)


def test_wrong_compiled_code_is_caught_by_the_self_check(model, tmp_path: Path, caplog) -> None:
    """A cache entry holding another model's (valid) code: the probe rows expose it."""
    path, booster, X = model
    other_booster = lgb.train({"objective": "binary", "num_leaves": 4, "verbosity": -1,
                               "num_threads": 1}, lgb.Dataset(np.nan_to_num(X),
                                                              (X[:, 0] > 0).astype(int)), 5)
    other = tmp_path / "other.txt"
    other_booster.save_model(str(other))
    right = CompiledModel(path, tmp_path / "cache", booster=booster)
    wrong = CompiledModel(other, tmp_path / "cache", booster=other_booster)
    assert right.cache_path is not None and wrong.cache_path is not None
    code = wrong.cache_path.read_bytes()
    right.cache_path.write_bytes(code)
    Path(str(right.cache_path) + ".sha256").write_text(hashlib.sha256(code).hexdigest())
    with caplog.at_level(logging.WARNING, logger="recsvc.adapters.compiled"):
        served = CompiledModel(path, tmp_path / "cache", booster=booster)
    assert not served.compiled and "differ" in (served.fallback_reason or "")
    assert "falling back" in caplog.text
    np.testing.assert_allclose(served.predict_raw(X), booster.predict(X, raw_score=True),
                               rtol=0, atol=0)


def test_falls_back_to_lightgbm_on_an_unreadable_model(model, tmp_path: Path, caplog) -> None:
    _, booster, X = model
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"\x00\x01 not a LightGBM model \xff")
    with caplog.at_level(logging.WARNING, logger="recsvc.adapters.compiled"):
        served = CompiledModel(garbage, tmp_path / "cache", booster=booster)
    assert not served.compiled and served.fallback_reason
    assert "falling back to Booster.predict" in caplog.text
    np.testing.assert_allclose(served.predict_raw(X), booster.predict(X, raw_score=True),
                               rtol=0, atol=0)
    np.testing.assert_allclose(served.predict_proba(X), booster.predict(X), rtol=0, atol=1e-12)
    # no booster to fall back on either: the error is LightGBM's, not a silent wrong answer
    with pytest.raises(lgb.basic.LightGBMError):
        CompiledModel(garbage, tmp_path / "cache")


def test_linear_trees_are_not_compiled(tmp_path: Path) -> None:
    """lleaves ignores linear leaves, which would give wrong numbers: refuse, use LightGBM."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 3))
    y = (X[:, 0] + rng.normal(size=500) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "linear_tree": True, "num_leaves": 4,
                         "verbosity": -1, "num_threads": 1}, lgb.Dataset(X, y), 5)
    path = tmp_path / "linear.txt"
    booster.save_model(str(path))
    served = CompiledModel(path, tmp_path / "cache")  # the fallback loads the file itself
    assert not served.compiled and "linear" in (served.fallback_reason or "")
    np.testing.assert_allclose(served.predict_raw(X), booster.predict(X, raw_score=True),
                               rtol=0, atol=1e-12)


def test_compiled_leaves_equal_pred_leaf(model, tmp_path: Path) -> None:
    """The leaf numbers packed into a multi-output model read back as LightGBM's, on the
    training rows, the awkward ones (categories unseen and negative, NaN, near-zero), the
    split points and beside them; 20 trees of 15 leaves: 13 a double, so two outputs, the
    second part filled with empty copies."""
    path, booster, X = model
    leaves = CompiledLeaves(path, booster, tmp_path / "cache")
    assert leaves.compiled and leaves.fallback_reason is None
    assert (leaves.bits, leaves.per_output) == (4, 13)
    for data in (_inputs(X), probe_rows(path.read_text(), len(FEATURES), rows=2000, seed=5)):
        want = booster.predict(data, pred_leaf=True).astype(np.int64)
        assert np.array_equal(leaves.predict_leaf(data), want)
    assert leaves.predict_leaf(X[:1]).shape == (1, booster.num_trees())


def test_compiled_leaves_fall_back_to_pred_leaf(model, tmp_path: Path, caplog) -> None:
    _, booster, X = model
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("tree\nversion=v4\nnot a model\n")
    with caplog.at_level(logging.WARNING, logger="recsvc.adapters.compiled"):
        leaves = CompiledLeaves(garbage, booster, tmp_path / "cache")
    assert not leaves.compiled and "using pred_leaf" in caplog.text
    assert np.array_equal(leaves.predict_leaf(X), booster.predict(X, pred_leaf=True))


def test_compiling_in_a_child_fills_the_cache_the_process_then_loads(model,
                                                                    tmp_path: Path) -> None:
    """A serving worker compiles a new model in a child process (its own GIL and a lower
    priority); it then finds the code and the leaves in the cache and compiles nothing."""
    from recsvc.adapters.compile_cache import cached, compile_in_child

    path, booster, X = model
    cache = tmp_path / "cache"
    assert not cached(path, cache, leaves=True)
    assert compile_in_child(path, cache, leaves=True) is None
    assert cached(path, cache) and cached(path, cache, leaves=True)
    model_ = CompiledModel(path, cache, booster=booster)
    leaves = CompiledLeaves(path, booster, cache)
    assert model_.compiled and not model_.compiled_now and leaves.compiled
    assert np.array_equal(leaves.predict_leaf(X), booster.predict(X, pred_leaf=True))
    assert compile_in_child(path, cache, leaves=True) is None  # cached: no child at all
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("tree\nversion=v4\nnot a model\n")
    assert "exited" in (compile_in_child(garbage, cache) or "")


def test_one_compile_a_machine_the_others_wait_and_find_it_cached(model, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """While one process holds the compile lock, another waits; once the code is in the cache
    it returns without starting a child of its own."""
    import fcntl
    import hashlib as _hashlib
    import subprocess
    import threading

    from recsvc.adapters import compile_cache

    path, booster, _ = model
    cache = tmp_path / "cache"
    folder = cache / _hashlib.sha256(path.read_bytes()).hexdigest()
    folder.mkdir(parents=True)
    started: list[object] = []
    real = subprocess.Popen
    monkeypatch.setattr(compile_cache.subprocess, "Popen",
                        lambda *a, **k: started.append(a) or real(*a, **k))
    done: list[str | None] = []
    with open(folder / ".compiling.lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another worker is compiling
        waiter = threading.Thread(target=lambda: done.append(
            compile_cache.compile_in_child(path, cache, leaves=True)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not done  # it waits for the lock
        CompiledModel(path, cache, booster=booster)  # what the other worker's child writes
        CompiledLeaves(path, booster, cache)
    waiter.join(30)
    assert done == [None] and not started  # found in the cache: no child of its own
