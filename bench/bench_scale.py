"""Benchmark how the batch jobs scale: members, and the local engine against Dask workers.

    python bench/bench_scale.py [--members 1000000,5000000] [--days 540]
                                   [--engines local,dask-1,dask-2]
                                   [--steps snapshots,train,score,materialise-redis,
                                            materialise-cluster]
                                   [--redis-url redis://127.0.0.1:6379/15] [--data-root DIR]

For every population (simulated once, `--days` days, kept under --data-root when given) and
every engine (`local`: one process; `dask-N`: a LocalCluster of N single-threaded worker
processes, started for the step), each step runs in a process of its own so that its peak
memory is its own: the caller's (ru_maxrss) and, on Dask, every worker's. Steps:

- snapshots: `snapshots.build_features(force=True)` (table rows in, snapshot rows out);
- train: the churn model, `train_model` (point-in-time training set through Feast, LightGBM,
  the evaluation), into a registry of the benchmark's own;
- score: `score_batch` into Redis: every member scored and the scores materialised;
- materialise-redis / materialise-cluster: every feature view's latest rows into Redis, and
  into a Redis Cluster of three masters and three replicas started for the run.

Redis is written under project names of the benchmark's own, deleted afterwards. Results:
scale.json and scale.md (bench/results/ for a run with every option at its default, else a
temporary folder, printed: benchutil).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchutil import (  # a sibling module
    OUT_HELP,
    choose_out,
    cpu_model,
    exit_on_sigterm,
    save_results,
)

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("snapshots", "train", "score", "materialise-redis", "materialise-cluster")
MB = 1024  # ru_maxrss is in KiB on Linux


# --------------------------------------------------------------------------------------------
# One step, in a process of its own (`--child STEP`).
# --------------------------------------------------------------------------------------------
def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB, 1)


def _settings(data_dir: Path, project: str, url: str | None, repo: Path | None) -> Any:
    from recsvc.settings import Settings

    return Settings(data_dir=data_dir, feature_repo=repo or ROOT / "feature_repo",
                    feast_project=project, redis_url=url,
                    model_registry=data_dir / "bench-models")


def _store(settings: Any) -> Any:
    from recsvc.adapters import feast as store

    feast_store = store.open_store(settings)
    store.apply_definitions(feast_store, store.load_definitions(settings.data_dir,
                                                                settings.feature_repo))
    return feast_store


def child(args: argparse.Namespace) -> dict[str, Any]:
    from recsvc.config import load_programme
    from recsvc.engine import open_engine

    programme = load_programme()
    engine_name, _, n = args.engine.partition("-")
    settings = _settings(args.data_dir, args.project, args.url, args.repo)
    with open_engine(engine_name, None, int(n) if n else None) as engine:
        t = time.perf_counter()
        out = STEP_RUNS[args.child](settings, programme, engine)
        out["step_seconds"] = round(time.perf_counter() - t, 2)  # with the store's opening
        out.setdefault("seconds", out["step_seconds"])
        if engine.distributed:
            peaks = engine.client.run(_peak_mb)
            out["worker_peak_mb"] = max(peaks.values())
    out["caller_peak_mb"] = _peak_mb()
    return out


def _snapshots(settings: Any, programme: Any, engine: Any) -> dict[str, Any]:
    from recsvc.offline import snapshots

    build = snapshots.build_features(settings.data_dir, programme, force=True, engine=engine)
    return {"rows": build.total_rows, "input_rows": build.input_rows}


def _train(settings: Any, programme: Any, engine: Any) -> dict[str, Any]:
    from recsvc.adapters.context import open_context
    from recsvc.offline.training import TrainOptions, train_model

    _store(settings)
    ctx = open_context(settings)
    lines: list[str] = []
    result = train_model("churn", Path(settings.data_dir), programme, ctx.history,
                         ctx.registry, TrainOptions(horizon_days=90, engine=engine),
                         data_fingerprint="bench-scale", say=lines.append)
    rows = next(int(m[1].replace(",", "")) for line in lines
                if (m := re.match(r"churn: ([\d,]+) rows", line)))  # the training set
    return {"rows": rows,
            "test_auc": round(float(result.test_metrics["lightgbm"]["roc_auc"]), 4)}


def _score(settings: Any, programme: Any, engine: Any) -> dict[str, Any]:
    from recsvc.adapters.context import open_context
    from recsvc.offline.batch_scoring import score_batch

    _store(settings)
    result = score_batch(open_context(settings), as_of=None, out=None, engine=engine,
                         say=lambda _: None)  # the model the train step registered
    return {"rows": result.rows, "seconds": round(result.seconds, 2)}


def _materialise(settings: Any, programme: Any, engine: Any) -> dict[str, Any]:
    from recsvc.adapters import materialise
    from recsvc.offline import compute, snapshots

    feast_store = _store(settings)
    manifest = snapshots.read_manifest(settings.data_dir)
    assert manifest is not None, "no snapshots: run the snapshots step first"
    as_of = dt.datetime.fromisoformat(manifest["as_of"])
    t = time.perf_counter()  # the materialisation alone (on Dask: the workers' start included)
    # a project of its own, new: a first fill, as `recsvc features` makes one (views cleared)
    done = materialise.materialize(feast_store, as_of, list(compute.VIEWS), full=True,
                                   cleared=True, engine=engine, settings=settings,
                                   say=lambda _: None)
    return {"rows": sum(r.rows for r in done), "seconds": round(time.perf_counter() - t, 2)}


STEP_RUNS = {"snapshots": _snapshots, "train": _train, "score": _score,
             "materialise-redis": _materialise, "materialise-cluster": _materialise}


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------
def simulate(data_dir: Path, members: int, days: int) -> dict[str, Any]:
    from recsvc.data import schema

    if schema.has_tables(data_dir):
        print(f"tables: reusing {schema.tables_dir(data_dir)}", flush=True)
        return {}
    t = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "recsvc"), "simulate", "--members",
                    str(members), "--days", str(days), "--items", str(max(members // 20, 50)),
                    "--out", str(data_dir)], check=True)
    return {"seconds": round(time.perf_counter() - t, 1)}


def borrow_model(registry: Path, data_dir: Path) -> str:
    """Copy `registry`'s production churn model into the population's benchmark registry (as
    its only version, production), for a score step without a train step; its description."""
    from recsvc.adapters.registry import Registry

    source = Registry(registry)
    version = source.production("churn")
    if version is None:
        raise SystemExit(f"--churn-model: {registry} has no production churn model")
    target = data_dir / "bench-models" / "churn"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(registry) / "churn", target)
    window = source.manifest("churn", version).training_window
    return f"churn {version} of {registry}, trained on data up to {window.end:%Y-%m-%d}"


def run_step(step: str, engine: str, data_dir: Path, project: str, url: str | None,
             repo: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", step, "--engine", engine, "--data-dir",
           str(data_dir), "--project", project]
    if url:
        cmd += ["--url", url]
    if repo:
        cmd += ["--repo", str(repo)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Batch jobs at scale: members, and the local engine against Dask workers",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB. "
        f"Command: `{result['command']}`. Run {result['finished']}.",
        f"Populations simulated over {result['params']['days']} days; each step a process of "
        "its own (peak memory: the caller's, and the largest worker's on Dask); `dask-N`: a "
        "LocalCluster of N single-threaded worker processes started for the step.",
        "",
        "| members | step | engine | rows | seconds | rows/s | caller peak MB | worker peak MB "
        "| note |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    borrowed = [f"{size['members']:,} members: scored with {size['churn_model']}"
                for size in result["sizes"] if size.get("churn_model")]
    for size in result["sizes"]:
        for step, engines in size["steps"].items():
            for engine, r in engines.items():
                if "error" in r:
                    lines.append(f"| {size['members']:,} | {step} | {engine} | | | | | | "
                                 f"failed: {r['error']} |")
                    continue
                rows = r.get("rows") or 0
                rate = f"{rows / r['seconds']:,.0f}" if rows and r["seconds"] else ""
                note = (f"{r['input_rows']:,} table rows in" if "input_rows" in r
                        else f"test AUC {r['test_auc']}" if "test_auc" in r else "")
                lines.append(f"| {size['members']:,} | {step} | {engine} | {rows:,} | "
                             f"{r['seconds']:.1f} | {rate} | {r['caller_peak_mb']:,.0f} | "
                             f"{r.get('worker_peak_mb', 0):,.0f} | {note} |")
    if borrowed:
        lines += ["", *(f"- {b} (no train step in this run)" for b in borrowed)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1000000,5000000",
                        help="populations, comma-separated (default 1000000,5000000)")
    parser.add_argument("--days", type=int, default=540)
    parser.add_argument("--engines", default="local,dask-1,dask-2")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--redis-url", default=os.environ.get("RECSVC_REDIS_URL")
                        or "redis://127.0.0.1:6379/15")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="keep the populations here (m<members>/), reusing their tables; "
                             "default: a temporary directory, removed afterwards")
    parser.add_argument("--churn-model", type=Path, default=None,
                        help="a model registry (e.g. data/models) whose production churn model "
                             "the score step uses where the train step does not run (the "
                             "churn training set of 5 M members is out of reach here)")
    parser.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    args.out = choose_out(parser, args)
    exit_on_sigterm()  # the Redis Cluster it starts is stopped on a kill too
    sys.path.insert(0, str(ROOT / "tests"))
    import redis
    from redis.cluster import RedisCluster

    from conftest import cluster_feature_repo, redis_cluster  # the tests' own cluster starter
    from recsvc.adapters.online_write import delete_project_keys

    steps = args.steps.split(",")
    engines = args.engines.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="recsvc-scale-"))
    root = args.data_root or tmp
    memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gb": memory_gb},
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "params": {"members": args.members, "days": args.days, "engines": engines,
                   "steps": steps},
        "sizes": [],
    }
    try:
        with redis_cluster(tmp) as nodes:
            cluster_url = f"redis://127.0.0.1:{next(iter(nodes))}"
            repo = cluster_feature_repo(tmp)
            for members in (int(m) for m in args.members.split(",")):
                data_dir = root / f"m{members}"
                size: dict[str, Any] = {"members": members,
                                        "simulate": simulate(data_dir, members, args.days),
                                        "steps": {}}
                result["sizes"].append(size)
                if args.churn_model is not None and "train" not in steps:
                    size["churn_model"] = borrow_model(args.churn_model, data_dir)
                for step in steps:
                    for engine in engines:
                        project = f"scale_{uuid.uuid4().hex[:8]}"
                        on_cluster = step == "materialise-cluster"
                        url = cluster_url if on_cluster else (
                            args.redis_url if step in ("score", "materialise-redis") else None)
                        print(f"{members:,} members: {step} on {engine} ...", flush=True)
                        r = run_step(step, engine, data_dir, project, url,
                                     repo if on_cluster else None)
                        size["steps"].setdefault(step, {})[engine] = r
                        print(f"  {r}", flush=True)
                        if url:
                            client: Any = (RedisCluster.from_url(url) if on_cluster
                                           else redis.Redis.from_url(url))
                            delete_project_keys(client, project)
                            client.close()
                shutil.rmtree(data_dir / "bench-models", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save_results(args.out, "scale", result, markdown)


if __name__ == "__main__":
    main()
