"""Benchmark the feature platform: simulation, snapshots, materialisation, online reads.

    python bench/bench_features.py [--members 100000] [--days 365] [--items 5000]
                                      [--reads 300] [--redis-url redis://127.0.0.1:6379/15]
                                      [--compare-feast] [--data-dir DIR]

Writes features.json and features.md to bench/results/ when every option is at its default,
else to a temporary folder, printed (benchutil); --out DIR writes there. Redis is filled under a
project name of the benchmark's own, deleted afterwards (never FLUSHDB: it may be shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import inspect
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchutil import (  # a sibling module: run as training/<script>.py
    OUT_HELP,
    choose_out,
    cpu_model,
    save_results,
)
from recsvc.adapters import feast as store
from recsvc.adapters import materialise, online_write
from recsvc.config import load_programme
from recsvc.data import schema
from recsvc.offline import compute, snapshots
from recsvc.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

# FACTS.md, measured with Feast 0.67 on this kind of machine (100,000 members, 5,000 items).
FACTS = {
    "materialize_rows_per_s": {"sqlite": 7_000, "redis": 11_600},
    "churn_1_member_ms": {"redis": (0.44, 0.65), "sqlite": (0.63, 0.96)},
    "propensity_1_member_200_items_ms": {"redis": (25.3, 151.0), "sqlite": (31.0, 158.0)},
}


def machine() -> dict[str, Any]:
    model = cpu_model()
    import feast

    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "feast": feast.__version__, "platform": platform.platform()}


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(samples)}


def time_reads(read: Callable[[], Any], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        read()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        read()
        out.append(time.perf_counter() - t)
    return out


def simulate(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from recsvc.offline.simulate import run_simulation

    kwargs: dict[str, Any] = {}
    params = inspect.signature(run_simulation).parameters
    if "items" in params:
        kwargs["items"] = args.items
    if "show_progress" in params:
        kwargs["show_progress"] = False
    summary = run_simulation(data_dir, members=args.members, days=args.days, seed=args.seed,
                             programme=load_programme(), **kwargs)
    rows = summary.rows if isinstance(summary.rows, int) else sum(summary.rows.values())
    return {"rows": rows, "seconds": round(summary.seconds, 3),
            "rows_per_s": round(rows / summary.seconds),
            "tables": summary.rows if isinstance(summary.rows, dict) else None}


def _as_of(settings: Settings) -> dt.datetime:
    manifest = snapshots.read_manifest(settings.data_dir)
    assert manifest is not None, "no feature manifest: compute first"
    return dt.datetime.fromisoformat(manifest["as_of"])


def materialize(settings: Settings, label: str) -> dict[str, Any]:
    feast_store = store.open_store(settings)
    store.apply_definitions(feast_store, store.load_definitions(settings.data_dir,
                                                                settings.feature_repo))
    t = time.perf_counter()
    results = materialise.materialize(feast_store, _as_of(settings), list(compute.VIEWS), full=True)
    seconds = time.perf_counter() - t
    rows = sum(r.rows for r in results)
    print(f"materialise ({label}): {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "views": {r.view: {"rows": r.rows, "seconds": round(r.seconds, 3)} for r in results}}


def feast_materialize(settings: Settings, label: str) -> dict[str, Any]:
    """Feast's own FeatureStore.materialize over the same window, for comparison."""
    feast_store = store.open_store(settings)
    defs = store.load_definitions(settings.data_dir, settings.feature_repo)
    store.apply_definitions(feast_store, defs)
    end = _as_of(settings)
    t = time.perf_counter()
    views = [v for v in defs.views if v.name in compute.VIEWS]
    for view in views:
        feast_store.materialize(end - view.ttl, end, feature_views=[view.name])
    seconds = time.perf_counter() - t
    rows = sum(materialise.snapshot_rows(feast_store, v, end - v.ttl, end).num_rows for v in views)
    print(f"Feast materialize ({label}): {rows:,} rows in {seconds:.1f} s "
          f"({rows / seconds:,.0f} rows/s)")
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def reads(settings: Settings, n: int, seed: int) -> dict[str, Any]:
    import pyarrow.compute as pc

    feast_store = store.open_store(settings)
    tables = {name: schema.read_table(settings.data_dir, name, [f"{name[:-1]}_id"])
              for name in ("members", "items")}
    members = pc.unique(tables["members"]["member_id"]).to_pylist()
    items = pc.unique(tables["items"]["item_id"]).to_pylist()
    rng = random.Random(seed)
    churn = feast_store.get_feature_service("churn_v1")
    propensity = feast_store.get_feature_service("propensity_v1")

    def one_member() -> Any:
        rows = [{"member_id": rng.choice(members)}]
        return feast_store.get_online_features(features=churn, entity_rows=rows,
                                               full_feature_names=True).to_dict()

    def member_and_items() -> Any:
        m = rng.choice(members)
        rows = [{"member_id": m, "item_id": i} for i in rng.sample(items, min(200, len(items)))]
        return feast_store.get_online_features(features=propensity, entity_rows=rows,
                                               full_feature_names=True).to_dict()

    sample = one_member()
    assert any(v[0] is not None for k, v in sample.items() if k != "member_id"), "no values"
    out: dict[str, Any] = {}
    for mode in ("default", "gc_freeze"):
        if mode == "gc_freeze":
            gc.collect()
            gc.freeze()  # what a server does after start-up: the tail is full collections
        out[mode] = {
            "churn_1_member": percentiles(time_reads(one_member, n)),
            "propensity_1_member_200_items": percentiles(time_reads(member_and_items, n // 3)),
        }
    gc.unfreeze()
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Feature platform benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, Feast {m['feast']}.",
        f"Command: `{result['command']}`  ",
        f"Population: {result['params']['members']:,} members x {result['params']['days']} days,"
        f" {result['params']['items']:,} items (seed {result['params']['seed']}). "
        f"Run {result['finished']}.",
        "",
        "| step | rows | seconds | rows/s | FACTS.md / brief reference |",
        "|---|---:|---:|---:|---|",
    ]
    sim = result.get("simulate")
    if sim:
        lines.append(f"| simulate (canonical tables) | {sim['rows']:,} | {sim['seconds']:.1f} "
                     f"| {sim['rows_per_s']:,} | — |")
    c = result["compute"]
    lines.append(f"| compute snapshots (table rows in) | {c['input_rows']:,} | "
                 f"{c['seconds']:.1f} | {c['input_rows_per_s']:,} | — |")
    lines.append(f"| compute snapshots (snapshot rows out) | {c['output_rows']:,} | "
                 f"{c['seconds']:.1f} | {c['output_rows_per_s']:,} | — |")
    for kind in ("sqlite", "redis"):
        mat = result["materialize"].get(kind)
        if mat:
            ref = FACTS["materialize_rows_per_s"][kind]
            extra = " (brief: ~2,800 on SQLite)" if kind == "sqlite" else " (target: < 30 s)"
            lines.append(f"| materialise into {kind} (recsvc) | {mat['rows']:,} | "
                         f"{mat['seconds']:.1f} | {mat['rows_per_s']:,} | Feast SDK {ref:,}"
                         f"{extra} |")
        own = result.get("feast_materialize", {}).get(kind)
        if own:
            lines.append(f"| materialise into {kind} (Feast's own `materialize`) | "
                         f"{own['rows']:,} | {own['seconds']:.1f} | {own['rows_per_s']:,} | "
                         f"Feast SDK {FACTS['materialize_rows_per_s'][kind]:,} |")
    lines += [
        "",
        "Online reads, in process, `get_online_features(...).to_dict()` with full feature names,"
        " p50 / p99 in ms (Redis on the same machine):",
        "",
        "| read | store | default | after `gc.freeze()` | FACTS.md |",
        "|---|---|---:|---:|---:|",
    ]
    n_member = sum(len(compute.VIEWS[v]) - 2 for v in ("member_activity", "member_points"))
    n_item = sum(len(compute.VIEWS[v]) - 2 for v in ("item_catalogue", "item_stats"))
    names = {"churn_1_member": (f"1 member, churn_v1 ({n_member} features)",
                                "churn_1_member_ms"),
             "propensity_1_member_200_items": ("1 member + 200 items, propensity_v1",
                                               "propensity_1_member_200_items_ms")}
    for key, (label, fact) in names.items():
        for kind in ("sqlite", "redis"):
            r = result["online"].get(kind)
            if not r:
                continue
            d, g = r["default"][key], r["gc_freeze"][key]
            f50, f99 = FACTS[fact][kind]
            lines.append(f"| {label} | {kind} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | "
                         f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f} | {f50} / {f99} |")
    lines += [
        "",
        "recsvc materialises from the latest snapshot per entity (a filtered Parquet read), "
        "in Feast's layout: into SQLite through the online store's own `online_write_batch`, "
        "into Redis with its numpy writer (`recsvc.adapters.redis_write`: the same bytes, the "
        "commands built per column and written down one connection); Feast's "
        "`materialize` reads and sorts the views' whole history with Dask and converts every "
        "value through pandas first. FACTS.md's read numbers used 18 features per member and "
        f"13 per item; churn_v1 has {n_member} and propensity_v1 {n_member + n_item} "
        f"({n_item} per item).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--items", type=int, default=None,
                        help="catalogue size (default members / 20, so 5,000 for 100,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--reads", type=int, default=300, help="reads per measurement")
    parser.add_argument("--redis-url", default=os.environ.get("RECSVC_REDIS_URL")
                        or "redis://127.0.0.1:6379/15")
    parser.add_argument("--no-redis", action="store_true", help="skip everything Redis")
    parser.add_argument("--compare-feast", action="store_true",
                        help="also time Feast's own FeatureStore.materialize")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the data here (reusing its tables if any); default: a "
                             "temporary directory, removed afterwards")
    parser.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    args = parser.parse_args()
    args.out = choose_out(parser, args)  # before any default is filled in
    args.items = args.items or max(args.members // 20, 50)

    tmp = None if args.data_dir else Path(tempfile.mkdtemp(prefix="recsvc-bench-"))
    data_dir = args.data_dir or tmp
    assert data_dir is not None
    project = f"recsvc_bench_{uuid.uuid4().hex[:8]}"
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "params": {"members": args.members, "days": args.days, "items": args.items,
                   "seed": args.seed, "reads": args.reads},
        "materialize": {}, "online": {}, "feast_materialize": {},
    }
    kinds = {"sqlite": None} if args.no_redis else {"sqlite": None, "redis": args.redis_url}
    try:
        if schema.has_tables(data_dir):
            print(f"tables: reusing {schema.tables_dir(data_dir)}")
        else:
            result["simulate"] = sim = simulate(data_dir, args)
            print(f"simulate: {sim['rows']:,} rows in {sim['seconds']:.1f} s "
                  f"({sim['rows_per_s']:,} rows/s)")
        build = snapshots.build_features(data_dir, load_programme(), force=True)
        result["compute"] = {
            "input_rows": build.input_rows, "output_rows": build.total_rows,
            "seconds": round(build.seconds, 3), "views": build.rows,
            "input_rows_per_s": round(build.input_rows / build.seconds),
            "output_rows_per_s": round(build.total_rows / build.seconds),
        }
        print(f"compute: {build.input_rows:,} table rows -> {build.total_rows:,} snapshot rows "
              f"in {build.seconds:.1f} s ({result['compute']['input_rows_per_s']:,} in/s, "
              f"{result['compute']['output_rows_per_s']:,} out/s)")
        for kind, url in kinds.items():
            settings = Settings(data_dir=data_dir, feature_repo=ROOT / "feature_repo",
                                feast_project=project, redis_url=url)
            result["materialize"][kind] = materialize(settings, kind)
            result["online"][kind] = r = reads(settings, args.reads, args.seed)
            for mode, v in r.items():
                print(f"reads ({kind}, {mode}): " + ", ".join(
                    f"{k} p50 {x['p50_ms']:.2f} ms p99 {x['p99_ms']:.2f} ms" for k, x in v.items()))
            if args.compare_feast:
                own = Settings(data_dir=data_dir, feature_repo=ROOT / "feature_repo",
                               feast_project=f"{project}_feast", redis_url=url)
                result["feast_materialize"][kind] = feast_materialize(own, kind)
    finally:
        if not args.no_redis:
            import redis

            client = redis.Redis.from_url(args.redis_url)
            gone = sum(online_write.delete_project_keys(client, p)
                       for p in (project, f"{project}_feast"))
            client.close()
            print(f"redis: deleted {gone:,} keys of {project}")
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    save_results(args.out, "features", result, markdown)


if __name__ == "__main__":
    main()
