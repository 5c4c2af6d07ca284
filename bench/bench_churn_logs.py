"""The churn gate on real-shaped logs: what serves against the best classic model, per log.

    python bench/bench_churn_logs.py [--customers 23570] [--seed 5] [--logs bg_nbd,...]
                                        [--out DIR]

For every process in `recsvc.offline.btyd_log.LOGS` (BG/NBD and Pareto/NBD with their published
CDNOW parameters, BG/NBD with a yearly season, BG/NBD with a cohort that stops at once), a
CDNOW-sized log (23,570 customers, 78 weeks) goes through the product's own path in a data
folder of its own: `recsvc import-transactions` -> `recsvc features` -> `recsvc train`. The
table gives, from the registered churn version's manifest, what won the validation split and
serves, its test ROC-AUC with the bootstrap interval, and the best classic scorer's on the
same test split (every baseline: recency, RFM logistic regression, BG/NBD and Pareto/NBD as
P(no purchase within the horizon), as expected purchases and P(alive)).

Then the short-history case on the BG/NBD log: only the first nine months are imported, and
`recsvc score-batch --as-of 1997-09-30 --horizon-days 273` scores the next 39 weeks, which no
cut-off in nine months can label; its ROC-AUC against who really bought nothing in those 39
weeks, beside BG/NBD with the true parameters on the same customers.

Writes churn_logs.json and churn_logs.md to bench/results/ when every option is at its
default, else to a temporary folder, printed (benchutil); --out DIR writes there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import roc_auc_score

from benchutil import OUT_HELP, choose_out, cpu_model, save_results
from recsvc.ml import runtime
from recsvc.offline.btyd_log import LOGS, btyd_log, churn_truth, true_churn

CUSTOMERS = 23_570  # CDNOW's master file
SHORT_AS_OF = "1997-09-30"
SHORT_CUTOFF = dt.datetime(1997, 10, 1)
SHORT_WEEKS = 39


def _recsvc(data: Path, project: str, *argv: str) -> str:
    """Run a recsvc command on its own data folder and Feast project; its output."""
    env = {**os.environ, "RECSVC_DATA_DIR": str(data), "RECSVC_FEAST_PROJECT": project}
    exe = Path(sys.executable).with_name("recsvc")
    done = subprocess.run([str(exe), *argv], check=False, env=env, capture_output=True,
                          text=True)
    if done.returncode not in (0, 3):  # 3: trained, not promoted (still registered)
        raise SystemExit(f"recsvc {' '.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}")
    return done.stdout


def _manifest(data: Path, version: str) -> dict[str, Any]:
    path = data / "models" / "churn" / version / "manifest.json"
    got: dict[str, Any] = json.loads(path.read_text())
    return got


def _test_ci(data: Path, version: str, name: str) -> list[float] | None:
    """The bootstrap interval of `name`'s test ROC-AUC from the version's report."""
    metrics = json.loads((data / "models" / "churn" / version / "report" / "metrics.json")
                         .read_text())
    ci: list[float] | None = metrics["evaluation"]["scorers"][name].get("roc_auc_ci")
    return ci


def gate_row(process: str, customers: int, seed: int, root: Path) -> dict[str, Any]:
    folder = root / process
    folder.mkdir(parents=True)
    csv, data = folder / "log.csv", folder / "data"
    frame = LOGS[process](customers, seed)
    frame.to_csv(csv, index=False)
    project = f"churnlogs_{process}_{uuid.uuid4().hex[:8]}"
    for argv in (("import-transactions", str(csv)), ("features",), ("train", "--model", "churn")):
        print(f"{process}: recsvc {' '.join(argv)}", flush=True)
        out = _recsvc(data, project, *argv)
    version = next(line.split("registered ")[1].split(";")[0] for line in out.splitlines()
                   if "registered v" in line)
    extra = _manifest(data, version)["extra"]
    test = extra["test"]
    classic = {k: v["roc_auc"] for k, v in test.items() if k in runtime.CLASSIC}
    best = max(classic, key=lambda k: classic[k])
    served = extra["served"]
    return {"log": process, "customers": customers, "purchases": len(frame),
            "version": version, "served": served, "split": extra["split"],
            "validation": extra["candidates"],
            "served_auc": test["served"]["roc_auc"], "served_ci": _test_ci(data, version,
                                                                           "served"),
            "best_classic": best, "best_classic_auc": classic[best],
            "trees_auc": test["lightgbm"]["roc_auc"],
            "earlier_fold": extra.get("earlier_fold"),
            "met": test["served"]["roc_auc"] >= classic[best]}


def short_row(customers: int, seed: int, root: Path) -> dict[str, Any]:
    """Nine months imported, scored for the next 39 weeks."""
    folder = root / "short"
    folder.mkdir(parents=True)
    log = btyd_log(customers, seed)
    ts = pd.to_datetime(log.timestamp)
    before = log[ts < SHORT_CUTOFF]
    csv, data, scores = folder / "log.csv", folder / "data", folder / "scores.csv"
    before.to_csv(csv, index=False)
    project = f"churnlogs_short_{uuid.uuid4().hex[:8]}"
    _recsvc(data, project, "import-transactions", str(csv))
    _recsvc(data, project, "features", "--as-of", SHORT_AS_OF)
    said = _recsvc(data, project, "score-batch", "--as-of", SHORT_AS_OF, "--horizon-days",
                   str(SHORT_WEEKS * 7), "--out", str(scores))
    got = pd.read_csv(scores).set_index("customer_id")
    truth = churn_truth(log, SHORT_CUTOFF, weeks=SHORT_WEEKS)
    joined = got.join(truth.rename("churned"), how="inner")
    true = true_churn(log, SHORT_CUTOFF, weeks=SHORT_WEEKS)
    told = [line for line in said.splitlines() if "too short" in line]
    version = next(line.rsplit(" with churn ", 1)[1] for line in said.splitlines()
                   if " with churn " in line)
    return {"customers": customers, "as_of": SHORT_AS_OF, "horizon_days": SHORT_WEEKS * 7,
            "model_version": version,
            "auc": float(roc_auc_score(joined.churned, joined.churn_probability)),
            "true_bgnbd_auc": float(roc_auc_score(truth.reindex(true.index), true)),
            "mean_probability": float(joined.churn_probability.mean()),
            "share_churned": float(joined.churned.mean()), "told": told}


def render(result: dict[str, Any]) -> str:
    lines = [
        "# The churn gate on real-shaped logs",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`. Run "
        f"{result['finished']}.",
        "",
        f"Each log: {result['customers']:,} customers (CDNOW's size) first buying in the first "
        "12 weeks of 1997, followed 78 weeks; `recsvc import-transactions` -> `features` -> "
        "`train`; test split: the last month start whose 90-day window the log covers. What "
        "serves won validation and, if trees, also the earlier fold (validation one label window "
        "before, every model refitted before it).",
        "",
        "| log | purchases | serves (validation winner) | earlier fold's winner | its test "
        "ROC-AUC (95 % CI) | best classic on test | trees boosted from BG/NBD | served >= best "
        "classic |",
        "| --- | ---: | --- | --- | ---: | --- | ---: | --- |",
    ]
    for r in result["logs"]:
        ci = r["served_ci"]
        fold = r.get("earlier_fold")
        earlier = f"{fold['served']} ({fold['valid']})" if fold else "none"
        lines.append(
            f"| {r['log']} | {r['purchases']:,} | {r['served']} | {earlier} | "
            f"{r['served_auc']:.4f} ({ci[0]:.4f}-{ci[1]:.4f}) | "
            f"{r['best_classic']} {r['best_classic_auc']:.4f} | "
            f"{r['trees_auc']:.4f} | {'yes' if r['met'] else 'NO'} |")
    s = result.get("short")
    if s:
        lines += [
            "",
            f"Short history: the BG/NBD log's first nine months only, `recsvc score-batch "
            f"--as-of {s['as_of']} --horizon-days {s['horizon_days']}` (two horizons would be "
            f"{2 * s['horizon_days']} days). It said: " + " ".join(f"\"{t}\"" for t in s["told"]),
            "",
            "| scored with | ROC-AUC vs no purchase in the next 39 weeks | mean probability | "
            "share who bought nothing |",
            "| --- | ---: | ---: | ---: |",
            f"| {s['model_version']} | {s['auc']:.4f} | {s['mean_probability']:.3f} | "
            f"{s['share_churned']:.3f} |",
            f"| BG/NBD with the true parameters (reference) | {s['true_bgnbd_auc']:.4f} | | |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=CUSTOMERS)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--logs", default=",".join(sorted(LOGS)),
                        help="comma-separated names from btyd_log.LOGS")
    parser.add_argument("--no-short", action="store_true", help="skip the short-history row")
    parser.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    args = parser.parse_args()
    out = choose_out(parser, args)
    result: dict[str, Any] = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}",
        "command": " ".join(["python bench/bench_churn_logs.py", *sys.argv[1:]]),
        "customers": args.customers, "logs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for process in args.logs.split(","):
            result["logs"].append(gate_row(process, args.customers, args.seed, Path(tmp)))
            r = result["logs"][-1]
            print(f"{process}: serves {r['served']} {r['served_auc']:.4f}; best classic "
                  f"{r['best_classic']} {r['best_classic_auc']:.4f}", flush=True)
        if not args.no_short:
            result["short"] = short_row(args.customers, args.seed, Path(tmp))
    save_results(out, "churn_logs", result, render)


if __name__ == "__main__":
    main()
