"""The real-log path: import -> features -> train -> score-batch --as-of, with the cut-off kept."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from recsvc import cli
from recsvc.ml import runtime
from recsvc.offline.btyd_log import LOGS, btyd_log, churn_truth, true_churn

CUTOFF_DAY = "1997-09-30"
CUTOFF = dt.datetime(1997, 10, 1)
GATE_CUSTOMERS = 4000
GATE_TOLERANCE = 0.003  # validation picks the winner; on the test split it may trail by noise


def _run(monkeypatch: pytest.MonkeyPatch, data: Path, project: str, *argv: str) -> int:
    monkeypatch.setenv("RECSVC_DATA_DIR", str(data))
    monkeypatch.setenv("RECSVC_FEAST_PROJECT", project)
    return cli.main(list(argv))


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return btyd_log(4000, seed=21)


def _score(monkeypatch: pytest.MonkeyPatch, tmp: Path, frame: pd.DataFrame, name: str,
           features_as_of: str | None) -> pd.DataFrame:
    csv = tmp / f"{name}.csv"
    frame.to_csv(csv, index=False)
    data = tmp / name / "data"
    project = f"reallog_{name}_{dt.datetime.now():%H%M%S%f}"
    assert _run(monkeypatch, data, project, "import-transactions", str(csv)) == 0
    extra = ["--as-of", features_as_of] if features_as_of else []
    assert _run(monkeypatch, data, project, "features", *extra) == 0
    # a full `train` first: its model saw data after the cut-off, so scoring must not use it
    assert _run(monkeypatch, data, project, "train") in (0, 3)
    out = tmp / name / "scores.csv"
    assert _run(monkeypatch, data, project, "score-batch", "--as-of", CUTOFF_DAY,
                "--out", str(out)) == 0
    return pd.read_csv(out)


def test_scores_as_of_a_date_ignore_everything_after_it(
    log: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _score(monkeypatch, tmp_path, log, "full", None)
    before = log[pd.to_datetime(log.timestamp) < CUTOFF]
    cut = _score(monkeypatch, tmp_path, before, "cut", CUTOFF_DAY)
    assert list(full.columns[:4]) == ["customer_id", "churn_probability", "band", "segment"]
    # the same members, and the same scores whether or not the later rows were in the file
    assert len(full) == len(cut) == before.customer_id.nunique()
    merged = full.merge(cut, on="customer_id", suffixes=("_full", "_cut"))
    assert len(merged) == len(full)
    pd.testing.assert_series_equal(merged.churn_probability_full, merged.churn_probability_cut,
                                   check_names=False, atol=1e-9)
    assert (merged.segment_full == merged.segment_cut).all()

    # and they rank who buys nothing in the next 39 weeks
    truth = churn_truth(log, CUTOFF)
    scored = full.set_index("customer_id").join(truth.rename("churned"), how="inner")
    assert roc_auc_score(scored.churned, scored.churn_probability) > 0.65


def _manifest(data: Path, version: str) -> dict:
    return json.loads((data / "models" / "churn" / version / "manifest.json").read_text())


def test_a_history_shorter_than_two_horizons_is_scored_at_the_horizon_asked(
    log: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nine months of history, asked about the next 39 weeks (273 days): no cut-off has a
    # 273-day label before the as-of date, so the labels are shorter and a BTYD model serves
    before = log[pd.to_datetime(log.timestamp) < CUTOFF]
    csv, data = tmp_path / "short.csv", tmp_path / "data"
    before.to_csv(csv, index=False)
    project = f"reallog_short_{dt.datetime.now():%H%M%S%f}"
    assert _run(monkeypatch, data, project, "import-transactions", str(csv)) == 0
    assert _run(monkeypatch, data, project, "features", "--as-of", CUTOFF_DAY) == 0
    out = tmp_path / "scores.csv"
    assert _run(monkeypatch, data, project, "score-batch", "--as-of", CUTOFF_DAY,
                "--horizon-days", "273", "--out", str(out)) == 0
    version = pd.read_parquet(data / "scores" / "member_churn_scores").model_version.iloc[0]
    number, served = version.split("/")
    manifest = _manifest(data, number)
    assert manifest["extra"]["horizon_days"] == 273
    assert manifest["extra"]["label_horizon_days"] < 273
    assert served in runtime.BTYD and manifest["extra"]["served"] == served
    # what it did is told: the note says the labels were shorter than the horizon
    assert "too short for labels at 273 days" in manifest["extra"]["split"]["note"]

    # the scores rank who buys nothing in those 39 weeks as well as the true BTYD process
    scores = pd.read_csv(out).set_index("customer_id")
    truth = churn_truth(log, CUTOFF, weeks=39)
    scored = scores.join(truth.rename("churned"), how="inner")
    auc = roc_auc_score(scored.churned, scored.churn_probability)
    true = true_churn(log, CUTOFF, weeks=39)
    true_auc = roc_auc_score(truth.reindex(true.index), true)
    assert auc >= true_auc - 0.01
    # and are probabilities of that horizon, not of the labels' shorter one: their mean is
    # nearer the share who buy nothing in 39 weeks than the share who buy nothing in 13
    mean = scored.churn_probability.mean()
    short = churn_truth(log, CUTOFF, weeks=13).reindex(scored.index).mean()
    assert abs(mean - scored.churned.mean()) < abs(mean - short)


@pytest.mark.parametrize("process", sorted(LOGS))
def test_on_each_real_shaped_log_what_serves_is_at_least_the_best_classic_model(
    process: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv, data = tmp_path / "log.csv", tmp_path / "data"
    LOGS[process](GATE_CUSTOMERS, 5).to_csv(csv, index=False)
    project = f"gate_{process}_{dt.datetime.now():%H%M%S%f}"
    assert _run(monkeypatch, data, project, "import-transactions", str(csv)) == 0
    assert _run(monkeypatch, data, project, "features") == 0
    assert _run(monkeypatch, data, project, "train") == 0  # promoted: it beat the rest
    production = (data / "models" / "churn" / "PRODUCTION").read_text()
    manifest = _manifest(data, json.loads(production)["version"])
    extra = manifest["extra"]
    # on validation, nothing classic ranks above what serves
    assert max(extra["candidates"][k] for k in runtime.CLASSIC) <= \
        extra["candidates"][extra["served"]]
    # on the test split too, the classic models included as their other forms
    test = extra["test"]
    classic = {k: v["roc_auc"] for k, v in test.items() if k not in ("served", *runtime.TREES)}
    assert test["served"]["roc_auc"] >= max(classic.values()) - GATE_TOLERANCE, classic
