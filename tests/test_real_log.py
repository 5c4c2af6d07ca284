"""The real-log path: import -> features -> train -> score-batch --as-of, with the cut-off kept."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from recsvc import cli
from recsvc.data.btyd_log import btyd_log, churn_truth

CUTOFF_DAY = "1997-09-30"
CUTOFF = dt.datetime(1997, 10, 1)


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
