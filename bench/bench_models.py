"""Benchmark the models: training time, predict latency (Booster vs lleaves), batch scoring.

    python bench/bench_models.py [--rows 1000000] [--features 45] [--rounds 200]
                                    [--members 200000] [--sim-members 4000] [--sim-days 480]
                                    [--reps 1.0] [--quick] [--profile] [--data-dir DIR]

(a) Training: `recsvc.offline.fitting.LGB_PARAMS` (with monotone constraints, as `fit_booster`
    sets them), all cores, a fixed number of rounds without early stopping, on synthetic data:
    `--features` columns of which 5 categorical, some with NaN, a binary label drawn from a
    nonlinear function of them. Goal: <= 60 s for 1,000,000 rows.
(b) Latency of 1, 50, 200 and 1,000 rows on one thread with that model (200 trees x 31
    leaves): `Booster.predict`, `recsvc.adapters.compiled.CompiledModel.predict_raw` (lleaves),
    and lleaves' own `Model.predict`; every output checked equal to LightGBM's within 1e-6.
(c) Batch scoring: a churn model trained by the project's own pipeline on a small simulated
    programme, `ChurnScorer.score(cols, num_threads=0)` timed on `--members` feature rows
    replicated and perturbed from the offline store (no I/O timed). Goal: >= 200,000
    members/s. Also with the compiled predictor swapped in for the booster.

Writes models.json and models.md to bench/results/ when every option is at its default, else
to a temporary folder, printed (benchutil); --out DIR writes there. `--quick` shrinks every size.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchutil import (  # a sibling module: run as training/<script>.py
    OUT_HELP,
    choose_out,
    cpu_model,
    population,
    save_results,
)

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-6
SIZES = (1, 50, 200, 1000)
CATEGORICAL_CARDINALITIES = (3, 5, 8, 20, 60)  # one-hot (<= 8) and bitset splits both
TRAIN_GOAL_S = 60.0
BATCH_GOAL = 200_000

# FACTS.md, "LightGBM scoring", 200 trees x 31 leaves on this kind of machine (2 cores).
FACTS_US = {
    "booster": {1: 64.0, 50: 900.0, 1000: 14_000.0},
    "lleaves": {1: 16.0, 50: 210.0, 1000: 3_500.0},
}
FACTS_BOOSTER_1_P99_US = 159.0

F64 = npt.NDArray[np.float64]


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    model = cpu_model()
    return {"cpu": model, "cores": os.cpu_count(), "load_average": _load(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "python": platform.python_version(),
            "lightgbm": version("lightgbm"), "lleaves": version("lleaves"),
            "llvmlite": version("llvmlite"), "numpy": version("numpy"),
            "platform": platform.platform()}


def _load() -> list[float]:
    """1/5/15-minute load averages: other work on the machine makes every number slower."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _busy(load: list[float]) -> list[float]:
    cores = os.cpu_count() or 1
    if load and load[0] > 0.5 * cores:
        print(f"warning: load average {load[0]:.1f} on {cores} cores: other work is running, "
              "and LightGBM's OpenMP threads slow down badly when a core is taken")
    return load


# --------------------------------------------------------------------------------------------
# (a) training on synthetic data.
# --------------------------------------------------------------------------------------------
def synthetic(rows: int, n_features: int, seed: int) -> tuple[F64, npt.NDArray[np.int64]]:
    """Numeric columns (a few with 10 % NaN), 5 categorical code columns (NaN = unseen or
    null, as `inputs.encode` gives), and a label from a nonlinear function of them."""
    rng = np.random.default_rng(seed)
    n_cat = len(CATEGORICAL_CARDINALITIES)
    X = rng.standard_normal((rows, n_features))
    cats = range(n_features - n_cat, n_features)
    for j, card in zip(cats, CATEGORICAL_CARDINALITIES, strict=True):
        X[:, j] = rng.integers(0, card, rows)
    effects = [np.random.default_rng(100 + c).normal(0, 0.7, c) for c in CATEGORICAL_CARDINALITIES]
    z = (1.2 * np.sin(2 * X[:, 0]) + 0.8 * X[:, 1] * X[:, 2] + (X[:, 3] > 0.5)
         - 0.4 * X[:, 4] ** 2 + 0.5 * np.abs(X[:, 5]) + 0.3 * np.maximum(X[:, 6], 0) * X[:, 7]
         + 0.5 * X[:, 8] - 0.5 * X[:, 9] + 0.2 * X[:, 10:20].sum(axis=1) / np.sqrt(10))
    for j, effect in zip(cats, effects, strict=True):
        z += effect[X[:, j].astype(int)]
    y = (rng.random(rows) < 1 / (1 + np.exp(-(z - 0.5)))).astype(np.int64)
    for j in (2, 11, 13, 21, 30):  # missing values, after the label saw the true ones
        X[rng.random(rows) < 0.1, j] = np.nan
    for j in cats[-2:]:
        X[rng.random(rows) < 0.03, j] = np.nan
    return X, y


def train(args: argparse.Namespace, model_file: Path) -> dict[str, Any]:
    import lightgbm as lgb

    from recsvc.offline.fitting import LGB_PARAMS

    threads = os.cpu_count() or 1
    X, y = synthetic(args.rows, args.features, seed=1)
    names = [f"f{j:02d}" for j in range(args.features)]
    cats = names[-len(CATEGORICAL_CARDINALITIES):]
    # as fit_booster: the project's parameters, a seed, all cores, monotone constraints
    # (on the two columns the label is monotone in) with the "advanced" method
    params = dict(LGB_PARAMS, seed=7, num_threads=threads)
    monotone = {"f08": 1, "f09": -1}
    params["monotone_constraints"] = [monotone.get(n, 0) for n in names]
    params["monotone_constraints_method"] = "advanced"
    gc.collect()
    start = time.perf_counter()
    dataset = lgb.Dataset(X, y, feature_name=names, categorical_feature=cats,
                          params={"verbosity": -1, "num_threads": threads})
    dataset.construct()
    built = time.perf_counter()
    booster = lgb.train(params, dataset, num_boost_round=args.rounds)
    done = time.perf_counter()
    booster.save_model(str(model_file))
    leaves = [int(line.split("=")[1]) for line in model_file.read_text().splitlines()
              if line.startswith("num_leaves=")]
    result = {
        "rows": args.rows, "features": args.features, "categorical": len(cats),
        "rounds": args.rounds, "threads": threads, "positive_rate": round(float(y.mean()), 4),
        "dataset_seconds": round(built - start, 2), "boosting_seconds": round(done - built, 2),
        "seconds": round(done - start, 2), "trees": booster.num_trees(),
        "mean_leaves": round(float(np.mean(leaves)), 2), "max_leaves": max(leaves),
        "goal_seconds": TRAIN_GOAL_S, "meets_goal": done - start <= TRAIN_GOAL_S,
        "params": {k: v for k, v in params.items() if k != "monotone_constraints"},
    }
    print(f"train: {args.rows:,} rows x {args.features} features, {args.rounds} rounds on "
          f"{threads} threads: {result['seconds']:.1f} s (dataset {result['dataset_seconds']:.1f}"
          f" s, boosting {result['boosting_seconds']:.1f} s); {result['trees']} trees, "
          f"{result['mean_leaves']:.1f} leaves on average")
    return result


# --------------------------------------------------------------------------------------------
# (b) latency.
# --------------------------------------------------------------------------------------------
def stats_us(samples: list[float]) -> dict[str, float]:
    us = np.asarray(samples) * 1e6
    return {"p50_us": round(float(np.percentile(us, 50)), 2),
            "p99_us": round(float(np.percentile(us, 99)), 2),
            "mean_us": round(float(us.mean()), 2), "n": len(samples)}


def time_calls(fn: Callable[[F64], Any], batches: list[F64], n: int, warmup: int) -> list[float]:
    for i in range(warmup):
        fn(batches[i % len(batches)])
    gc.collect()
    out = []
    for i in range(n):
        batch = batches[i % len(batches)]
        t = time.perf_counter()
        fn(batch)
        out.append(time.perf_counter() - t)
    return out


def latency(args: argparse.Namespace, model_file: Path, cache_dir: Path) -> dict[str, Any]:
    import lightgbm as lgb

    from recsvc.adapters.compiled import CompiledModel

    booster = lgb.Booster(model_file=str(model_file))
    cold = CompiledModel(model_file, cache_dir, booster=booster)
    if not cold.compiled:
        raise SystemExit(f"lleaves compilation failed: {cold.fallback_reason}")
    start = time.perf_counter()
    compiled = CompiledModel(model_file, cache_dir, booster=booster)
    cached_seconds = time.perf_counter() - start
    assert compiled.compiled and not compiled.compiled_now
    lleaves_model = compiled._lleaves  # lleaves' own predict, for comparison with FACTS.md
    print(f"compile: {cold.compile_seconds:.1f} s cold (lleaves), {cached_seconds * 1000:.0f} ms "
          "from the cache (with the self-check)")

    X, _ = synthetic(20_000, args.features, seed=2)
    want = booster.predict(X, raw_score=True, num_threads=1)
    worst = {
        "compiled": float(np.abs(compiled.predict_raw(X) - want).max()),
        "compiled_all_threads": float(np.abs(compiled.predict_raw(X, 0) - want).max()),
        "lleaves_predict": float(np.abs(lleaves_model.predict(X, n_jobs=1) - want).max()),
        "probability": float(np.abs(compiled.predict_proba(X) - booster.predict(X)).max()),
    }
    assert max(worst.values()) <= TOLERANCE, worst
    methods: dict[str, Callable[[F64], Any]] = {
        "booster": lambda b: booster.predict(b, raw_score=True, num_threads=1),
        "compiled": lambda b: compiled.predict_raw(b, 1),
        "lleaves": lambda b: lleaves_model.predict(b, n_jobs=1),
    }
    out: dict[str, Any] = {}
    for size in SIZES:
        n = max(50, int(args.reps * {1: 3000, 50: 1500, 200: 600, 1000: 200}[size]))
        batches = [X[i:i + size] for i in range(0, len(X) - size + 1, max(size, 97))][:64]
        for b in batches[:8]:  # the outputs of the timed calls, not only of one big call
            ref = booster.predict(b, raw_score=True, num_threads=1)
            for fn in (methods["compiled"], methods["lleaves"]):
                assert np.abs(fn(b) - ref).max() <= TOLERANCE
        row: dict[str, Any] = {"rows": size}
        for name, fn in methods.items():
            row[name] = stats_us(time_calls(fn, batches, n, warmup=max(20, n // 10)))
        row["speedup_p50"] = round(row["booster"]["p50_us"] / row["compiled"]["p50_us"], 2)
        out[str(size)] = row
        print(f"latency {size:>5} rows: Booster p50 {_us(row['booster']['p50_us'])} p99 "
              f"{_us(row['booster']['p99_us'])}; compiled p50 {_us(row['compiled']['p50_us'])} "
              f"p99 {_us(row['compiled']['p99_us'])}; lleaves.predict p50 "
              f"{_us(row['lleaves']['p50_us'])} ({row['speedup_p50']:.1f}x)")
    bulk = bulk_throughput(args, booster, compiled)
    return {"model": {"trees": booster.num_trees(), "features": booster.num_feature()},
            "bulk": bulk,
            "compile_seconds_cold": round(cold.compile_seconds, 2),
            "load_seconds_cached": round(cached_seconds, 3),
            "max_abs_diff": worst, "tolerance": TOLERANCE, "sizes": out}


def bulk_throughput(args: argparse.Namespace, booster: Any, compiled: Any) -> dict[str, Any]:
    """Rows/s of this 200-tree model on a batch-scoring-sized matrix with all threads: what
    batch scoring would cost with a model this size (the pipeline's churn model is smaller)."""
    X, _ = synthetic(args.members, args.features, seed=3)
    out: dict[str, Any] = {"rows": len(X)}
    runs = {"booster": lambda: booster.predict(X, raw_score=True, num_threads=0),
            "compiled": lambda: compiled.predict_raw(X, 0)}
    got = {}
    for name, fn in runs.items():
        got[name] = fn()
        seconds = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t)
        med = float(np.median(seconds))
        out[name] = {"seconds": round(med, 4), "rows_per_s": round(len(X) / med)}
    out["max_abs_diff"] = float(np.abs(got["booster"] - got["compiled"]).max())
    assert out["max_abs_diff"] <= TOLERANCE
    print(f"bulk {len(X):,} rows, all threads: Booster {out['booster']['rows_per_s']:,} rows/s, "
          f"compiled {out['compiled']['rows_per_s']:,} rows/s")
    return out


def _us(us: float) -> str:
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


# --------------------------------------------------------------------------------------------
# (c) batch scoring through ChurnScorer.
# --------------------------------------------------------------------------------------------
def churn_context(data_dir: Path, args: argparse.Namespace) -> Any:
    """A simulated programme with features and a promoted churn model (reused if present)."""
    from recsvc.adapters.context import open_context
    from recsvc.config import load_programme
    from recsvc.jobs.features import run_features
    from recsvc.jobs.models import train_and_promote
    from recsvc.settings import Settings

    settings = Settings(data_dir=data_dir, feature_repo=ROOT / "feature_repo",
                        feast_project="recsvc_bench_models")
    quiet: Callable[[str], None] = lambda _: None  # noqa: E731
    start = time.perf_counter()
    run_features(settings, load_programme(), say=quiet,
                 **population(data_dir, members=args.sim_members, days=args.sim_days, seed=5))
    ctx = open_context(settings)
    if ctx.registry.production("churn") is None:
        train_and_promote(ctx, ("churn",), as_of=None, horizon_days=90, say=quiet)
    print(f"batch: simulated {args.sim_members:,} members x {args.sim_days} days, features and "
          f"a churn model in {time.perf_counter() - start:.0f} s")
    return ctx


def member_columns(ctx: Any, members: int, seed: int) -> tuple[dict[str, Any], int]:
    """`members` rows of churn_v1 features: the offline store's rows as of the feature
    snapshot, replicated with multiplicative noise on the numbers (so no two copies walk the
    trees identically), as `score_batch` hands them to the scorer."""
    import pandas as pd

    from recsvc.data import schema
    from recsvc.ml.inputs import frame_columns, with_features
    from recsvc.offline.batch_scoring import features_as_of

    data_dir = Path(ctx.settings.data_dir)
    as_of = features_as_of(data_dir)
    frame = schema.read_table(data_dir, "members", ["member_id", "signup_at"]).to_pandas()
    frame = frame[frame.signup_at < as_of]
    entity = pd.DataFrame({"member_id": frame.member_id.to_numpy(),
                           "event_timestamp": pd.Timestamp(as_of)})
    real = with_features(ctx.history, "churn_v1", entity)
    rng = np.random.default_rng(seed)
    copies = -(-members // len(real))
    big = pd.concat([real] * copies, ignore_index=True).iloc[:members].copy()
    copy_no = np.arange(len(big)) // len(real)
    for c in big.columns:
        s = big[c]
        if c in ("member_id", "event_timestamp") or not pd.api.types.is_numeric_dtype(s.dtype):
            continue
        noise = np.exp(rng.normal(0, 0.15, len(big)))
        noise[copy_no == 0] = 1.0  # the first copy is the real data, unchanged
        values = s.astype("float64") * noise
        if c.endswith("_share"):
            values = values.clip(upper=1.0)
        if pd.api.types.is_integer_dtype(s.dtype):
            values = values.round()
        big[c] = values if not pd.api.types.is_integer_dtype(s.dtype) else values.astype(s.dtype)
    return frame_columns(big), len(real)


def batch(args: argparse.Namespace, data_dir: Path, cache_dir: Path) -> dict[str, Any]:
    from recsvc.adapters.compiled import CompiledModel
    from recsvc.ml.scoring import ChurnScorer

    ctx = churn_context(data_dir, args)
    loaded = ctx.registry.load("churn", known_features=ctx.known_features)
    cols, real = member_columns(ctx, args.members, seed=9)
    rows = len(next(iter(cols.values())))
    scorer = ChurnScorer(loaded)
    booster = loaded.booster
    compiled = CompiledModel(loaded.directory / loaded.manifest.model_file, cache_dir,
                             booster=booster)
    assert compiled.compiled, compiled.fallback_reason
    reps = max(3, int(5 * args.reps))

    def timed(fn: Callable[[], Any]) -> list[float]:
        fn()  # warm-up
        out = []
        for _ in range(reps):
            gc.collect()
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    result: dict[str, Any] = {
        "members": rows, "distinct_real_members": real, "model_version": scorer.version,
        "trees": booster.num_trees(), "inputs": len(scorer.features), "repetitions": reps,
        "goal_members_per_s": BATCH_GOAL,
    }
    built = scorer.matrix(cols)
    # the scorer's matrix may come with a prior margin the trees correct: (X, prior)
    X = built[0] if isinstance(built, tuple) else built
    parts = {
        "matrix": timed(lambda: scorer.matrix(cols)),
        "predict_booster": timed(lambda: booster.predict(X, raw_score=True, num_threads=0)),
        "predict_compiled": timed(lambda: compiled.predict_raw(X, 0)),
    }
    result["parts_seconds"] = {k: round(float(np.median(v)), 4) for k, v in parts.items()}
    scores = {}
    for name, model in (("booster", booster), ("compiled", compiled)):
        scorer.booster = model  # the scorer only calls predict(X, raw_score=True, ...)
        scores[name] = scorer.score(cols, num_threads=0).probability
        seconds = timed(lambda: scorer.score(cols, num_threads=0))
        med = float(np.median(seconds))
        result[name] = {"seconds_median": round(med, 4), "seconds_best": round(min(seconds), 4),
                        "members_per_s": round(rows / med),
                        "meets_goal": rows / med >= BATCH_GOAL}
        print(f"batch ({name}): {rows:,} members in {med:.3f} s (median of {reps}) = "
              f"{rows / med:,.0f} members/s; goal {BATCH_GOAL:,}")
    scorer.booster = booster
    result["max_abs_diff_probability"] = float(np.abs(scores["booster"]
                                                      - scores["compiled"]).max())
    assert result["max_abs_diff_probability"] <= TOLERANCE
    if args.profile or not result["booster"]["meets_goal"]:
        result["profile_booster"] = profile(lambda: scorer.score(cols, num_threads=0))
    return result


def profile(fn: Callable[[], Any], top: int = 12) -> list[dict[str, Any]]:
    """cProfile of one call: the functions with the most time of their own."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (_, calls, own, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = file.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        rows.append({"function": f"{where}:{line}({func})", "calls": calls,
                     "own_s": round(own, 4), "cumulative_s": round(cum, 4)})
    rows.sort(key=lambda r: -r["own_s"])
    for r in rows[:top]:
        print(f"profile: {r['own_s']:.3f} s own, {r['cumulative_s']:.3f} s cum  {r['function']}")
    return rows[:top]


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Models benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, LightGBM "
        f"{m['lightgbm']}, lleaves {m['lleaves']} (llvmlite {m['llvmlite']}), numpy "
        f"{m['numpy']}.  ",
        f"Command: `{result['command']}`  ",
        f"Run {result['finished']}; 1-minute load average at the start and before each part "
        "(after the start, it includes this benchmark's own earlier parts): "
        + ", ".join(f"{k} {v[0]:.2f}" for k, v in result.get("load_average", {}).items() if v)
        + ".",
        "",
    ]
    t = result.get("train")
    if t:
        verdict = "meets" if t["meets_goal"] else "misses"
        lines += [
            "## Training",
            "",
            "| rows | features (categorical) | rounds | threads | dataset | boosting | total | "
            "goal |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {t['rows']:,} | {t['features']} ({t['categorical']}) | {t['rounds']} | "
            f"{t['threads']} | {t['dataset_seconds']:.1f} s | {t['boosting_seconds']:.1f} s | "
            f"**{t['seconds']:.1f} s** | ≤ {t['goal_seconds']:.0f} s: {verdict} |",
            "",
            f"`LGB_PARAMS` as `fit_booster` uses them (31 leaves, 100 rows per leaf, "
            f"0.8 feature and row sampling, monotone constraints with the advanced method), "
            f"fixed rounds, no validation set or early stopping. The model has {t['trees']} "
            f"trees with {t['mean_leaves']:.1f} leaves on average (max {t['max_leaves']}); it is "
            "the model timed below.",
            "",
        ]
    lat = result.get("latency")
    if lat:
        lines += [
            "## Prediction latency, one thread",
            "",
            f"{lat['model']['trees']} trees × 31 leaves, {lat['model']['features']} inputs. "
            "p50 / p99 per call; raw margins. *compiled* is `recsvc.adapters.compiled."
            "CompiledModel.predict_raw` (lleaves code, called directly); *lleaves* is lleaves' "
            "own `Model.predict(X, n_jobs=1)` on the same code.",
            "",
            "| rows | `Booster.predict` | compiled | lleaves `predict` | speed-up (p50) | "
            "FACTS.md Booster | FACTS.md lleaves |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for size in SIZES:
            r = lat["sizes"].get(str(size))
            if not r:
                continue
            fb = FACTS_US["booster"].get(size)
            fl = FACTS_US["lleaves"].get(size)
            facts_b = "—" if fb is None else _us(fb)
            if size == 1:
                facts_b += f" ({_us(FACTS_BOOSTER_1_P99_US)} p99)"
            cells = [f"{_us(r[k]['p50_us'])} / {_us(r[k]['p99_us'])}"
                     for k in ("booster", "compiled", "lleaves")]
            lines.append(f"| {size:,} | {' | '.join(cells)} | {r['speedup_p50']:.1f}× | "
                         f"{facts_b} | {'—' if fl is None else _us(fl)} |")
        d = lat["max_abs_diff"]
        lines += [
            "",
            f"Largest |compiled − Booster| margin over 20,000 rows: {d['compiled']:.1e} "
            f"(all threads {d['compiled_all_threads']:.1e}; probabilities "
            f"{d['probability']:.1e}); tolerance {lat['tolerance']:g}, asserted for every "
            f"size. Compiling took {lat['compile_seconds_cold']:.1f} s cold; loading from the "
            f"SHA-256-keyed cache, with the probe self-check, {lat['load_seconds_cached']:.2f} s.",
            "",
        ]
        bk = lat.get("bulk")
        if bk:
            lines += [
                f"The same model on {bk['rows']:,} rows with all threads (predict only): "
                f"`Booster.predict` {bk['booster']['rows_per_s']:,} rows/s "
                f"({bk['booster']['seconds']:.2f} s), compiled "
                f"{bk['compiled']['rows_per_s']:,} rows/s ({bk['compiled']['seconds']:.2f} s); "
                f"largest difference {bk['max_abs_diff']:.1e}.",
                "",
            ]
    b = result.get("batch")
    if b:
        lines += [
            "## Batch scoring (`ChurnScorer.score`, all threads, no I/O)",
            "",
            f"The churn model trained by the project's pipeline on a simulated programme "
            f"({result['params']['sim_members']:,} members × {result['params']['sim_days']} "
            f"days; {b['model_version']}, {b['trees']} trees, {b['inputs']} inputs), scoring "
            f"{b['members']:,} members: the {b['distinct_real_members']:,} real feature rows "
            f"from the offline store, replicated with noise. Median of {b['repetitions']} runs.",
            "",
            "| predictor | seconds | members/s | goal ≥ 200,000/s |",
            "|---|---:|---:|---|",
        ]
        for name, label in (("booster", "`Booster.predict` (as `ChurnScorer` ships)"),
                            ("compiled", "compiled (lleaves) in its place")):
            r = b[name]
            lines.append(f"| {label} | {r['seconds_median']:.3f} | **{r['members_per_s']:,}** | "
                         f"{'meets' if r['meets_goal'] else 'misses'} |")
        p = b["parts_seconds"]
        rest = b["booster"]["seconds_median"] - p["matrix"] - p["predict_booster"]
        lines += [
            "",
            f"Where the time goes: building the input matrix (`inputs.matrix` with the BG/NBD "
            f"inputs) {p['matrix']:.3f} s; LightGBM predict {p['predict_booster']:.3f} s "
            f"(compiled {p['predict_compiled']:.3f} s); the remaining ~{max(rest, 0):.3f} s is "
            f"calibration, bands, RFM segments and actions. Probabilities of the two "
            f"predictors differ by at most {b['max_abs_diff_probability']:.1e}.",
            "",
        ]
        if b.get("profile_booster"):
            lines += ["cProfile of one `score` call (own time):", "",
                      "| function | calls | own s | cumulative s |", "|---|---:|---:|---:|"]
            for r in b["profile_booster"]:
                lines.append(f"| `{r['function']}` | {r['calls']:,} | {r['own_s']:.3f} | "
                             f"{r['cumulative_s']:.3f} |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows")
    parser.add_argument("--features", type=int, default=45)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--members", type=int, default=200_000, help="members batch-scored")
    parser.add_argument("--sim-members", type=int, default=4000)
    parser.add_argument("--sim-days", type=int, default=480)
    parser.add_argument("--reps", type=float, default=1.0, help="scale the repetition counts")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 training rows, 20,000 scored members, fewer repetitions")
    parser.add_argument("--profile", action="store_true",
                        help="profile batch scoring even when it meets its goal")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["train", "latency", "batch"], help="leave a part out")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the simulated programme here (reused when present); "
                             "default: a temporary directory, removed afterwards")
    parser.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    args = parser.parse_args()
    args.out = choose_out(parser, args)  # before any default is filled in
    if args.quick:
        args.rows, args.members = min(args.rows, 100_000), min(args.members, 20_000)
        args.reps = min(args.reps, 0.2)
    if args.features < 20 + len(CATEGORICAL_CARDINALITIES) + 1:
        parser.error("--features: at least 26 (the label uses the first 20)")

    tmp = Path(tempfile.mkdtemp(prefix="recsvc-bench-models-"))
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        model_file = tmp / "model.txt"
        # only the first reading is other people's work alone; later ones include ours
        loads = result["load_average"] = {"start": _busy(_load())}
        if "train" not in args.skip or "latency" not in args.skip:
            result["train"] = train(args, model_file)
        if "latency" not in args.skip:
            loads["latency"] = _load()
            result["latency"] = latency(args, model_file, tmp / "compiled")
        if "batch" not in args.skip:
            loads["batch"] = _load()
            result["batch"] = batch(args, args.data_dir or tmp / "data", tmp / "compiled")
        loads["end"] = _load()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save_results(args.out, "models", result, markdown)


if __name__ == "__main__":
    main()
