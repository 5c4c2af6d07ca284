"""The batch engines: partitions in this process (local) or on a Dask cluster (a LocalCluster
of the test's own), and what the jobs that use them write: the same bytes either way."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from recsvc.adapters import materialise
from recsvc.adapters.materialise import FILL_MARK_KEY
from recsvc.adapters.online_write import delete_project_keys
from recsvc.config import load_programme
from recsvc.engine import LOCAL, LOCAL_CLUSTER_QUIET, Engine, id_ranges, open_engine
from recsvc.errors import ConfigError, DataMissing, EngineUnavailable
from recsvc.jobs.features import run_features
from recsvc.settings import Settings

P = load_programme()
REPO = Path(__file__).resolve().parent.parent / "feature_repo"


def _fail_on(part: int, *, bad: int) -> int:
    if part == bad:
        raise DataMissing(f"part {part} has no rows")
    return part * 10


@pytest.mark.parametrize(("low", "high", "parts"), [(1, 100, 4), (5, 5, 3), (1, 3, 8),
                                                    (0, 1_000_003, 7), (10, 9, 2)])
def test_id_ranges_cover_every_id_once(low: int, high: int, parts: int) -> None:
    ranges = id_ranges(low, high, parts)
    covered = [i for a, b in ranges for i in range(a, b)] if high - low < 10_000 else None
    if high < low:
        assert ranges == []
        return
    assert ranges[0][0] == low and ranges[-1][1] == high + 1
    assert all(a < b for a, b in ranges) and len(ranges) <= parts
    assert all(ranges[k][1] == ranges[k + 1][0] for k in range(len(ranges) - 1))
    widths = [b - a for a, b in ranges]
    assert max(widths) - min(widths) <= 1
    if covered is not None:
        assert covered == list(range(low, high + 1))


def test_the_local_engine_maps_in_order_and_raises_a_partitions_error() -> None:
    done: list[int] = []
    assert LOCAL.map(_fail_on, [1, 2, 3], on_done=done.append, bad=0) == [10, 20, 30]
    assert done == [10, 20, 30] and LOCAL.workers == 1 and not LOCAL.distributed
    with pytest.raises(DataMissing, match="part 2"):
        LOCAL.map(_fail_on, [1, 2, 3], bad=2)


def test_engine_choices_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown engine 'spark'"), open_engine("spark"):
        pass
    with pytest.raises(ConfigError, match="--scheduler is for --engine dask"), \
            open_engine("local", "127.0.0.1:8786"):
        pass


# --------------------------------------------------------------------------------------------
# On a Dask LocalCluster.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_engine() -> Iterator[Engine]:
    """Two single-threaded worker processes, as `--engine dask` starts on this machine."""
    with open_engine("dask", workers=2) as engine:
        yield engine


@pytest.mark.slow
def test_a_dask_cluster_maps_in_order_and_raises_a_partitions_error(
        dask_engine: Engine) -> None:
    done: list[int] = []
    assert dask_engine.map(_fail_on, list(range(1, 9)), on_done=done.append, bad=0) == [
        10 * k for k in range(1, 9)]
    assert sorted(done) == [10 * k for k in range(1, 9)]
    assert dask_engine.workers == 2 and dask_engine.distributed
    with pytest.raises(DataMissing, match="part 5"):
        dask_engine.map(_fail_on, list(range(1, 9)), bad=5)


@pytest.mark.slow
def test_a_scheduler_address_is_used_and_a_dead_one_named() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      **LOCAL_CLUSTER_QUIET) as cluster:
        with open_engine("dask", cluster.scheduler_address) as engine:
            assert engine.map(_fail_on, [1, 2], bad=0) == [10, 20]
        dead = cluster.scheduler_address
    with pytest.raises(ConfigError, match="no Dask scheduler answers at"), \
            open_engine("dask", dead):
        pass


@pytest.mark.slow
def test_a_map_on_a_cluster_without_workers_fails_instead_of_waiting_for_ever() -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, processes=False, **LOCAL_CLUSTER_QUIET) as cluster, \
            Client(cluster, set_as_default=False) as client:
        engine = Engine("dask", client, no_worker_wait_s=1.0)
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match=r"no live worker .* 2 of 2 partitions"):
            engine.map(_fail_on, [1, 2], bad=0)
        assert time.monotonic() - started < 30
        cluster.scale(1)  # a worker that comes back in time is waited for
        client.wait_for_workers(1, timeout=30)
        assert engine.map(_fail_on, [1, 2], bad=0) == [10, 20]


def _dump(client: Any, project: str) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key)
            for key in client.scan_iter(match=b"*" + project.encode(), count=1000)
            if not key.startswith(FILL_MARK_KEY.encode())}


def _same_on_dask(settings: Settings, client: Any, engine: Engine,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Materialised by the local engine, then on the workers: the same keys and bytes, and
    every part written by a worker, not this process."""
    delete_project_keys(client, settings.feast_project)
    local = run_features(settings, P, say=lambda _: None)
    expected = _dump(client, settings.feast_project)
    assert local.materialized_rows == 1500 and len(expected) > 300
    delete_project_keys(client, settings.feast_project)
    with monkeypatch.context() as m:  # nothing written here: only on the workers
        m.setattr(materialise, "write_online", None)
        lines: list[str] = []
        run = run_features(settings, P, engine=engine, say=lines.append)
    assert run.materialized_rows == 1500, lines
    assert _dump(client, settings.feast_project) == expected


@pytest.mark.redis
@pytest.mark.slow
def test_materialisation_on_dask_writes_what_the_local_engine_writes(
        small_tables: Path, redis_url: str, redis_project: str, dask_engine: Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    settings = Settings(data_dir=small_tables, feature_repo=REPO, feast_project=redis_project,
                        redis_url=redis_url)
    with redis.Redis.from_url(redis_url) as client:
        _same_on_dask(settings, client, dask_engine, monkeypatch)


@pytest.mark.redis
@pytest.mark.slow
def test_materialisation_on_dask_writes_what_the_local_engine_writes_on_a_cluster(
        small_tables: Path, redis_cluster_url: str, tmp_path: Path, dask_engine: Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.cluster import RedisCluster

    from conftest import on_cluster

    with on_cluster(small_tables, f"eng_{uuid.uuid4().hex[:8]}", redis_cluster_url, tmp_path,
                    P) as settings:
        client = RedisCluster.from_url(str(settings.redis_url))
        try:
            _same_on_dask(settings, client, dask_engine, monkeypatch)
        finally:
            client.close()


@pytest.mark.slow
def test_on_sqlite_the_dask_engine_writes_from_this_process(
        small_tables: Path, tmp_path: Path, dask_engine: Engine) -> None:
    settings = Settings(data_dir=small_tables, feature_repo=REPO,
                        feast_project=f"eng_{uuid.uuid4().hex[:8]}")
    lines: list[str] = []
    run = run_features(settings, P, engine=dask_engine, say=lines.append)
    assert run.materialized_rows == 1500
    assert any("SQLite online store takes one writer" in line for line in lines)


@pytest.mark.slow
def test_batch_scores_on_dask_equal_the_local_engines(trained: Any, tmp_path: Path,
                                                      dask_engine: Engine) -> None:
    import numpy as np

    from recsvc.offline.batch_scoring import SCORES_VIEW, score_batch

    def scores(engine: Engine, name: str) -> tuple[Any, Any, list[str]]:
        lines: list[str] = []
        result = score_batch(trained, as_of=None, out=tmp_path / name, engine=engine,
                             say=lines.append)
        table = pq.read_table(Path(trained.settings.data_dir) / "scores" / SCORES_VIEW /
                              f"scores-{result.as_of:%Y%m%d}.parquet")
        return result, table, lines

    local, local_table, _ = scores(LOCAL, "local.csv")
    dask, dask_table, lines = scores(dask_engine, "dask.csv")
    assert any("Dask workers" in line for line in lines)
    assert (dask.rows, dask.model_version) == (local.rows, local.model_version)
    assert dask.rows == local_table.num_rows > 1000
    np.testing.assert_allclose(dask_table["churn_probability"].to_numpy(),
                               local_table["churn_probability"].to_numpy(), rtol=0, atol=1e-9)
    others = [c for c in local_table.column_names if c != "churn_probability"]
    assert dask_table.select(others).equals(local_table.select(others))
    assert (tmp_path / "dask.csv").read_text() == (tmp_path / "local.csv").read_text()


@pytest.mark.slow
def test_fraud_flags_on_dask_equal_the_local_engines(trained: Any, tmp_path: Path,
                                                     dask_engine: Engine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # one range and one block of the forest's scoring locally; several of each on Dask
    from recsvc.offline import fraud

    local = fraud.run_fraud_flags(trained.settings, trained.programme, out=tmp_path / "l.csv",
                                  say=lambda _: None)
    local_table = pq.read_table(local.offline)
    monkeypatch.setattr(fraud, "PART_MEMBERS", 3_000)
    monkeypatch.setattr(fraud, "SCORE_BLOCK", 2_000)
    dask = fraud.run_fraud_flags(trained.settings, trained.programme, out=tmp_path / "d.csv",
                                 engine=dask_engine, say=lambda _: None)
    assert local.rows >= 6_000 and (dask.rows, dask.as_of, dask.flagged, dask.online_rows) == (
        local.rows, local.as_of, local.flagged, local.online_rows)
    assert pq.read_table(dask.offline).equals(local_table)  # anomaly scores to the bit
    assert (tmp_path / "d.csv").read_text() == (tmp_path / "l.csv").read_text()


@pytest.mark.redis
@pytest.mark.slow
def test_nudges_on_dask_equal_the_local_engines_with_caps_counted_across_workers(
        small_tables: Path, redis_url: str, tmp_path: Path, dask_engine: Engine,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    from recsvc.adapters.caps_redis import RedisCapStore
    from recsvc.adapters.context import open_context
    from recsvc.jobs import nudges as nudges_job
    from recsvc.offline.batch_scoring import features_as_of

    monkeypatch.setattr(nudges_job, "PART_MEMBERS", 100)  # three ranges of the 300 members
    as_of = features_as_of(small_tables)
    projects = [f"eng_{uuid.uuid4().hex[:8]}" for _ in range(2)]  # caps of each run's own
    client = redis.Redis.from_url(redis_url)
    try:
        runs = []
        for project, engine in zip(projects, (LOCAL, dask_engine), strict=True):
            settings = Settings(data_dir=small_tables, feature_repo=REPO, feast_project=project,
                                redis_url=redis_url)
            run_features(settings, P, say=lambda _: None)
            runs.append(nudges_job.run_nudges(open_context(settings), as_of=as_of,
                                              out=tmp_path / f"{project}.csv", engine=engine,
                                              say=lambda _: None))
        local, dask = runs
        assert local.rows > 20 and (dask.rows, dask.capped, dask.degraded) == (
            local.rows, local.capped, local.degraded)
        assert dask.out.read_text() == local.out.read_text()
        # counted in Redis by the workers: the same day again is held back by the caps
        again = nudges_job.run_nudges(open_context(settings), as_of=as_of,
                                      out=tmp_path / "again.csv", engine=dask_engine,
                                      say=lambda _: None)
        assert again.rows < dask.rows and sum(again.capped.values()) > 0
        assert not list(tmp_path.glob(".*"))  # no staging left behind
    finally:
        for project in projects:
            RedisCapStore(client, project).delete_all()
            delete_project_keys(client, project)
        client.close()


@pytest.mark.slow
def test_nudges_on_dask_with_a_model_and_sqlite_caps(trained: Any, small_tables: Path,
                                                     tmp_path: Path,
                                                     dask_engine: Engine) -> None:
    from recsvc.adapters import caps
    from recsvc.adapters.context import open_context
    from recsvc.jobs import nudges as nudges_job
    from recsvc.offline.batch_scoring import features_as_of

    # a dry run (the caps read, nothing counted) ranks with the propensity model on the workers
    as_of = features_as_of(Path(trained.settings.data_dir))
    runs = [nudges_job.run_nudges(trained, as_of=as_of, out=tmp_path / f"{n}.csv",
                                  dry_run=True, engine=engine, say=lambda _: None)
            for n, engine in (("l", LOCAL), ("d", dask_engine))]
    assert runs[0].model_version and runs[0].rows > 100 and runs[1].rows == runs[0].rows
    assert (tmp_path / "d.csv").read_text() == (tmp_path / "l.csv").read_text()
    # counting against SQLite caps takes one writer: this process decides
    settings = Settings(data_dir=small_tables, feature_repo=REPO,
                        feast_project=f"eng_{uuid.uuid4().hex[:8]}")
    run_features(settings, P, say=lambda _: None)
    lines: list[str] = []
    try:
        counted = nudges_job.run_nudges(open_context(settings),
                                        as_of=features_as_of(small_tables),
                                        out=tmp_path / "c.csv", engine=dask_engine,
                                        say=lines.append)
    finally:
        (small_tables / caps.SQLITE_FILE).unlink(missing_ok=True)
    assert counted.rows > 0
    assert any("SQLite cap store takes one writer" in line for line in lines), lines


@pytest.mark.slow
def test_feature_snapshots_by_ranges_equal_one_pass_over_every_member(small_tables: Path,
                                                                     dask_engine: Engine) -> None:
    # the views computed in memory in one pass (compute_features) against the offline store
    # written by ranges of members: on the local engine with small ranges, and on Dask
    import pyarrow.dataset as ds

    from recsvc.offline import compute, snapshots

    def in_order(table: Any, view: str) -> Any:
        return table.sort_by([(compute.ENTITY_KEY[view], "ascending"),
                              (compute.TIMESTAMP_FIELD, "ascending")])

    def written() -> dict[str, Any]:
        return {view: in_order(ds.dataset(snapshots.view_dir(small_tables, view),
                                          format="parquet").to_table(), view)
                for view in compute.VIEWS}

    def prefixes(view: str = "member_points") -> set[str]:  # one file-name prefix a range
        return {p.name.split("-")[1]
                for p in snapshots.view_dir(small_tables, view).glob("*.parquet")}

    one_pass = snapshots.compute_features(snapshots.read_inputs(small_tables), P)
    expected = {view: in_order(table, view) for view, table in one_pass.items()}
    items = snapshots.read_inputs(small_tables)["items"].num_rows
    with pytest.MonkeyPatch.context() as m:
        m.setattr(snapshots, "PART_ITEMS", -(-items // 3))
        local = snapshots.build_features(small_tables, P, force=True, part_members=70)
    assert local.computed and len(prefixes()) == 5  # 300 members, 70 at most a range
    assert len(prefixes("item_stats")) == 3
    assert local.rows == {view: t.num_rows for view, t in expected.items()}
    got = written()
    for view in compute.VIEWS:
        assert got[view].num_rows > 0 and got[view].equals(expected[view]), view
    dask = snapshots.build_features(small_tables, P, force=True, engine=dask_engine)
    assert dask.computed and (dask.rows, dask.as_of, dask.input_rows) == (
        local.rows, local.as_of, local.input_rows)
    assert len(prefixes()) == 2  # a range a worker
    got = written()
    for view in compute.VIEWS:
        assert got[view].equals(expected[view]), view


@pytest.mark.slow
def test_a_model_trained_on_dask_is_as_good_as_the_local_one(trained: Any,
                                                            dask_engine: Engine) -> None:
    from recsvc.jobs.models import _fingerprint
    from recsvc.offline.training import TrainOptions, train_model

    def test_auc(engine: Engine) -> tuple[float, Any]:
        result = train_model("churn", Path(trained.settings.data_dir), trained.programme,
                             trained.history, trained.registry,
                             TrainOptions(horizon_days=90, engine=engine),
                             data_fingerprint=_fingerprint(trained.settings),
                             say=lambda _: None)
        return float(result.test_metrics["lightgbm"]["roc_auc"]), result

    local, _ = test_auc(LOCAL)
    dask, result = test_auc(dask_engine)
    assert abs(dask - local) <= 0.002, (dask, local)
    assert result.manifest.version not in (None, "")


@pytest.mark.slow
def test_the_jobs_run_on_a_scheduler_and_workers_started_by_hand(trained: Any) -> None:
    """The README's by-hand cluster: `dask scheduler`, a `dask worker`, and a job given
    `--scheduler` (here score-batch, from the command line, on the trained programme)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    bin_dir = Path(sys.executable).parent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    cluster = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1",
                                 "--port", str(port), "--no-dashboard"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        cluster.append(subprocess.Popen(
            [str(bin_dir / "dask"), "worker", f"tcp://{address}", "--nthreads", "1",
             "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        env = dict(os.environ, RECSVC_DATA_DIR=str(trained.settings.data_dir),
                   RECSVC_FEAST_PROJECT=trained.settings.feast_project)
        env.pop("RECSVC_REDIS_URL", None)
        deadline = time.monotonic() + 60
        while True:  # the worker registers with the scheduler a moment after both start
            done = subprocess.run([str(bin_dir / "recsvc"), "score-batch", "--engine", "dask",
                                   "--scheduler", address], env=env, capture_output=True,
                                  text=True, timeout=600, check=False)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "ranges on 1 Dask workers" in done.stdout, done.stdout
        assert "online" in done.stdout
    finally:
        for proc in cluster:
            proc.terminate()
        for proc in cluster:
            proc.wait(timeout=30)
