"""Batch-job plumbing: textfile metrics, the retraining lock and exit codes, the models CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from recsvc import cli
from recsvc.jobs.models import EXIT_BUSY, JobBusy, job_lock
from recsvc.metrics import read_last_success, recorded_job, write_job_metrics


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_job_textfile_is_valid_exposition_with_outcome_and_models(tmp_path: Path) -> None:
    path = tmp_path / "job.prom"
    write_job_metrics(path, "retrain", outcome="promoted", started=100.0, finished=160.0,
                      models={"churn": ("v0002", {"roc_auc": 0.88})})
    got = _samples(path)
    assert got[("recsvc_job_duration_seconds", (("job", "retrain"),))] == 60.0
    assert got[("recsvc_job_last_outcome", (("job", "retrain"), ("outcome", "promoted")))] == 1
    assert got[("recsvc_job_last_outcome", (("job", "retrain"), ("outcome", "failed")))] == 0
    assert got[("recsvc_job_model_validation_metric", (
        ("job", "retrain"), ("metric", "roc_auc"), ("model", "churn"),
        ("version", "v0002")))] == 0.88
    assert read_last_success(path, "retrain") == 160.0
    with pytest.raises(ValueError, match="outcome"):
        write_job_metrics(path, "retrain", outcome="maybe", started=0.0)


def test_a_failed_run_is_recorded_and_keeps_the_last_success(tmp_path: Path) -> None:
    path = tmp_path / "score.prom"
    with recorded_job(path, "score_batch") as run:
        run.rows = 10
    first = read_last_success(path, "score_batch")
    assert first is not None
    with pytest.raises(RuntimeError), recorded_job(path, "score_batch"):
        raise RuntimeError("store down")
    got = _samples(path)
    assert got[("recsvc_job_last_outcome", (("job", "score_batch"), ("outcome", "failed")))] == 1
    assert read_last_success(path, "score_batch") == first  # staleness counts from the success


def test_retraining_refuses_to_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_DATA_DIR", str(tmp_path))
    lock = tmp_path / ".retrain.lock"
    with job_lock(lock):
        with pytest.raises(JobBusy), job_lock(lock):
            pass
        assert cli.main(["retrain"]) == EXIT_BUSY
    # nothing was recorded as a failure: a busy scheduler slot is not a failed run
    assert not (tmp_path / "metrics" / "recsvc_retrain.prom").exists()


def test_models_cli_on_an_empty_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RECSVC_DATA_DIR", str(tmp_path))
    assert cli.main(["models", "list"]) == 0
    assert "no models" in capsys.readouterr().out
    assert cli.main(["models", "rollback", "churn"]) == 2  # nothing to roll back: a clear error
    assert "churn" in capsys.readouterr().err


def test_every_job_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("simulate", "import-transactions", "features", "train", "retrain",
                    "score-batch", "models", "nudges", "fraud-flags", "catalogue-report",
                    "liability-report"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        assert "usage: recsvc " + command in capsys.readouterr().out
