"""Evaluation metrics on synthetic scorers with known answers, and the report's files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsvc.offline import evaluation as ev
from recsvc.offline import evaluation_report as report


@pytest.fixture
def labelled() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    # a decent, calibrated probability: P(y=1 | s) = s
    s = np.clip(rng.beta(2, 8, 5_000), 0, 1)
    y = (rng.random(5_000) < s).astype(int)
    return y, s


def test_auc_extremes() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(20_000) < 0.3).astype(int)
    perfect = ev.binary_metrics(y, y.astype(float))
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0
    assert ev.binary_metrics(y, 1.0 - y, probabilistic=False)["roc_auc"] == 0.0
    random = ev.binary_metrics(y, rng.random(y.size))
    assert random["roc_auc"] == pytest.approx(0.5, abs=0.015)
    assert random["pr_auc"] == pytest.approx(y.mean(), abs=0.015)
    assert ev.binary_metrics(y, np.full(y.size, 0.3))["roc_auc"] == 0.5


def test_probability_metrics_on_known_values() -> None:
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.9, 0.6, 0.4])
    m = ev.binary_metrics(y, p)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    expected_ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert m["log_loss"] == pytest.approx(expected_ll)
    ranked = ev.binary_metrics(y, p * 100, probabilistic=False)
    assert ranked["log_loss"] is None and ranked["brier"] is None
    with pytest.raises(ValueError, match="probabilities"):
        ev.binary_metrics(y, p * 100)


def test_top_decile_lift() -> None:
    y = np.zeros(1_000, dtype=int)
    y[:50] = 1  # prevalence 5 %: a perfect top decile is half positives → lift 10
    assert ev.top_decile_lift(y, y.astype(float)) == pytest.approx(10.0)
    y[:200] = 1  # prevalence 20 %: a perfect top decile is all positives → lift 5
    assert ev.top_decile_lift(y, y.astype(float)) == pytest.approx(5.0)
    # ties at the cut count pro rata: a constant scorer has lift 1 exactly
    assert ev.top_decile_lift(y, np.ones(1_000)) == pytest.approx(1.0)
    assert ev.top_decile_lift(np.zeros(10, dtype=int), np.arange(10.0)) is None


def test_gains_curve_perfect_and_constant() -> None:
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    targeted, captured = ev.gains_curve(y, y.astype(float))
    assert targeted.tolist() == [0.0, 0.2, 1.0]
    assert captured.tolist() == [0.0, 1.0, 1.0]
    targeted, captured = ev.gains_curve(y, np.zeros(10))
    assert targeted.tolist() == [0.0, 1.0] and captured.tolist() == [0.0, 1.0]


def test_calibration_of_a_calibrated_scorer(labelled: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = labelled
    curve = ev.calibration(y, s, n_bins=5)
    assert curve["strategy"] == "quantile" and len(curve["prob_pred"]) == 5
    np.testing.assert_allclose(curve["prob_true"], curve["prob_pred"], atol=0.04)


def test_one_class_labels_leave_rank_metrics_undefined() -> None:
    m = ev.binary_metrics(np.zeros(20, dtype=int), np.linspace(0, 1, 20))
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["top_decile_lift"] is None
    assert m["brier"] is not None


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="binary"):
        ev.binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="scores for"):
        ev.binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="finite"):
        ev.binary_metrics([0, 1], [0.1, float("nan")])


def _scorers(y: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "model": s,
        "random": rng.random(y.size),
        "recency_days": np.log(s) * 30 + rng.normal(0, 40, y.size),  # weaker, rank-only
        "oracle": np.clip(s + (y - s) * 0.3, 0, 1),  # peeks at the labels: the best possible
    }


def test_evaluate_compares_model_baselines_and_oracle(
    labelled: tuple[np.ndarray, np.ndarray],
) -> None:
    y, s = labelled
    scorers = _scorers(y, s)
    result = ev.evaluate(
        y,
        scorers,
        baselines=["random", "recency_days"],
        oracle="oracle",
        probabilistic=["model", "random", "oracle"],
    )
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    per = result["scorers"]
    assert [per[n]["role"] for n in scorers] == ["model", "baseline", "baseline", "oracle"]
    assert per["recency_days"]["log_loss"] is None and per["recency_days"]["calibration"] is None
    assert result["best_baseline"] == "recency_days"
    comp = result["comparison"]["model"]
    assert comp["vs_best_baseline"] == pytest.approx(
        per["model"]["roc_auc"] - per["recency_days"]["roc_auc"]
    )
    assert comp["gap_to_oracle"] == pytest.approx(
        per["oracle"]["roc_auc"] - per["model"]["roc_auc"]
    )
    assert comp["vs_best_baseline"] > 0 and comp["gap_to_oracle"] > 0
    assert set(result["comparison"]) == {"model"}


def test_evaluate_detects_probabilities_by_default(
    labelled: tuple[np.ndarray, np.ndarray],
) -> None:
    y, s = labelled
    result = ev.evaluate(y, {"model": s, "days": s * 365}, baselines=["days"])
    assert result["scorers"]["model"]["probabilistic"] is True
    assert result["scorers"]["days"]["probabilistic"] is False
    with pytest.raises(ValueError, match="not among the scorers"):
        ev.evaluate(y, {"model": s}, baselines=["missing"])


def test_report_files_exist_and_json_round_trips(
    tmp_path: Path, labelled: tuple[np.ndarray, np.ndarray]
) -> None:
    y, s = labelled
    importance = {"recency_days": 812.5, "orders_90d": 430.0, "balance": 12.25}
    drivers = {"recency_days": 0.41, "orders_90d": 0.22, "balance": 0.01}
    files = report.write_report(
        tmp_path / "report",
        y,
        _scorers(y, s),
        title="churn v0003",
        baselines=["random", "recency_days"],
        oracle="oracle",
        probabilistic=["model", "random", "oracle"],
        training_window=("2024-01-01T00:00:00+00:00", "2024-09-30T00:00:00+00:00"),
        data_sizes={"train": 30_000, "validation": 5_000, "test": 5_000},
        importance=importance,
        drivers=drivers,
        notes=["simulated data"],
        extra={"rfm_thresholds": {"dormant_recency_days": 120.0}},
    )
    for p in [files.markdown, files.metrics_json, *files.plots.values()]:
        assert p.is_file() and p.stat().st_size > 0
    assert set(files.plots) == {"roc", "gains", "calibration", "importance"}
    for png in files.plots.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    payload = json.loads(files.metrics_json.read_text())
    assert json.loads(json.dumps(payload)) == payload
    assert payload["evaluation"] == json.loads(
        json.dumps(
            ev.evaluate(
                y,
                _scorers(y, s),
                baselines=["random", "recency_days"],
                oracle="oracle",
                probabilistic=["model", "random", "oracle"],
            )
        )
    )
    assert payload["training_window"]["start"].startswith("2024-01-01")
    assert payload["importance"] == importance and payload["extra"]["rfm_thresholds"]

    md = files.markdown.read_text()
    assert md.startswith("# churn v0003")
    assert "2024-01-01T00:00:00+00:00 → 2024-09-30T00:00:00+00:00" in md
    assert "train 30,000" in md
    assert "| **model** | model |" in md and "| recency_days | baseline |" in md
    assert "below the oracle" in md and "beats the best baseline (recency_days)" in md
    for png in files.plots.values():
        assert f"]({png.name})" in md
    assert md.index("| recency_days | 812.5") < md.index("| balance |")


def test_report_without_probabilities_or_importance(tmp_path: Path) -> None:
    y = np.array([0, 1] * 50)
    files = report.write_report(
        tmp_path, y, {"rule": np.arange(100.0) % 2}, title="rule only", probabilistic=[]
    )
    assert set(files.plots) == {"roc", "gains"}
    assert "## Top drivers" not in files.markdown.read_text()


def test_bootstrap_auc_equals_sklearn_on_each_resample() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random(700) < 0.3).astype(int)
    scorers = {"smooth": rng.normal(y, 1.5),
               "ties": np.round(rng.normal(y, 1.0)),  # few distinct values: ties matter
               "constant": np.zeros(700)}
    got = ev.bootstrap_auc(y, scorers, resamples=25, seed=9)
    draws = np.random.default_rng(9)  # the same resamples, drawn again
    for b in range(25):
        idx = draws.integers(0, 700, 700)
        for name, s in scorers.items():
            assert got[name][b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)
    assert np.all(got["constant"] == 0.5)


def test_bootstrap_interval_has_the_width_sampling_theory_gives() -> None:
    # Hanley & McNeil (1982): the standard error of an AUC from its value and class sizes
    rng = np.random.default_rng(4)
    n_pos, n_neg = 600, 2400
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    s = rng.normal(y * 1.0, 1.0)
    result = ev.evaluate(y, {"model": s, "noise": rng.random(y.size)}, baselines=["noise"],
                         probabilistic=[])
    auc = result["scorers"]["model"]["roc_auc"]
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = np.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2))
                 / (n_pos * n_neg))
    lo, hi = result["scorers"]["model"]["roc_auc_ci"]
    assert lo < auc < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.25)
    # the margin over the baseline comes with its own interval, clear of zero here
    margin_lo, margin_hi = result["comparison"]["model"]["vs_best_baseline_ci"]
    assert 0 < margin_lo < result["comparison"]["model"]["vs_best_baseline"] < margin_hi
    table = report.metrics_table(result)
    assert f"({lo:.4f}–{hi:.4f})" in table and "95 % bootstrap interval" in table
