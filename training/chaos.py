"""Faults under load: what callers see while a dependency or a worker fails, and how soon it ends.

    make chaos            # .venv/bin/python training/chaos.py [--rate 200] [--workers 2]

Fills a private redis-server (on a free port; the shared Redis is never touched) with the
default data's features (`make features && make train` first), serves them with
`recsvc serve --workers 2`, and holds an open-loop load of GetRedemptionHint at `--rate` plus
GetChurnRisk at a fifth of it (random members, 1 s deadlines), while each fault happens in
turn, `--before` seconds into a row and lasting `--fault` seconds:

- none: the baseline;
- redis_sigstop: Redis stopped (SIGSTOP: connections open, nothing answers), then resumed;
- worker_sigkill: one serving worker killed (the supervisor starts another);
- redis_restart_empty: Redis killed and started again empty, then `recsvc features` fills it;
- model_swaps: two churn versions promoted in turn every 2 s (a second one is trained, not
  promoted, on the data to a month earlier, in a copy of the registry, when there is none).

Per row: calls sent, calls failed by status code, degraded answers, p99 during the fault,
and recovery: the seconds from the fault's end to the last failed or degraded answer (0: none
after it ended). Writes bench/results/chaos.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))

from bench_serving import (  # noqa: E402
    RECSVC,
    build_requests,
    free_port,
    generate,
    server,
    service_env,
    sh,
    tail,
)

RESULTS = ROOT / "bench" / "results"
PROJECT = "recsvc_chaos"
SERVICE = "recsvc.v1.RedemptionService"


def start_redis(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port, socket_timeout=0.2)
    limit = time.monotonic() + 10
    while True:
        with contextlib.suppress(redis.RedisError):
            if client.ping():
                break
        if time.monotonic() > limit:
            raise RuntimeError(f"redis-server on {port} did not start")
        time.sleep(0.05)
    client.close()
    return proc


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=10)


def workers(pid: int) -> list[int]:
    """The serving worker processes of a `recsvc serve` supervisor."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
    return out


class Faults:
    """Each fault: (inject, end) callables, run at the row's `before` and `before + fault`."""

    def __init__(self, redis_port: int, redis_proc: subprocess.Popen[bytes], serve_pid: int,
                 env: dict[str, str], log: Path) -> None:
        self.port = redis_port
        self.redis = redis_proc
        self.serve_pid = serve_pid
        self.env = env
        self.log = log
        self.versions: list[str] = []
        self.swaps = 0

    def table(self) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
        return {
            "none": (lambda: None, lambda: None),
            "redis_sigstop": (lambda: os.kill(self.redis.pid, signal.SIGSTOP),
                              lambda: os.kill(self.redis.pid, signal.SIGCONT)),
            "worker_sigkill": (self._kill_worker, lambda: None),
            "redis_restart_empty": (self._restart_empty, self._refilled),
            "model_swaps": (self._start_swaps, self._stop_swaps),
        }

    def _start_swaps(self) -> None:
        """Promote the two churn versions in turn, every SWAP_EVERY_S, until the fault ends
        (the server looks for a new version every second here, so each one is loaded)."""
        self._swapping = threading.Event()
        versions = list(self.versions)
        original = versions[-1]

        from recsvc.models.registry import Registry

        registry = Registry(Path(self.env["RECSVC_MODEL_REGISTRY"]))

        def swap() -> None:
            k = 0
            while not self._swapping.wait(SWAP_EVERY_S if k else 0.0):
                # as `recsvc models promote churn VERSION --force` does, without its start-up
                registry.promote("churn", versions[k % len(versions)], force=True)
                k += 1
            self.swaps = k
            registry.promote("churn", original, force=True)

        self._swapper = threading.Thread(target=swap, daemon=True)
        self._swapper.start()

    def _stop_swaps(self) -> None:
        self._swapping.set()
        self._swapper.join()

    def _kill_worker(self) -> None:
        found = workers(self.serve_pid)
        if found:
            os.kill(found[0], signal.SIGKILL)

    def _restart_empty(self) -> None:
        stop_redis(self.redis)
        self.redis = start_redis(self.port)  # back at once, empty
        # what an operator runs next: the job notices the store lost its rows (its fill mark)
        self._refill = threading.Thread(target=self._features, daemon=True)
        self._refill.start()

    def _features(self) -> None:
        if sh([str(RECSVC), "features"], self.env, self.log):
            raise RuntimeError("recsvc features failed:\n" + tail(self.log))

    def _refilled(self) -> None:
        self._refill.join()


# faults that last longer than --fault: the refill of an emptied Redis runs inside the fault;
# ten promotions two seconds apart
SWAP_EVERY_S = 2.0
LONGER = {"redis_restart_empty": 30.0, "model_swaps": 20.0}


def second_churn_version(env: dict[str, str], log: Path, as_of: str) -> list[str]:
    """[another churn version, production]: a second one is trained (on the data up to
    `as_of`, not promoted) when the registry has only one, so there are two models to swap."""
    from recsvc.models.registry import Registry

    registry = Registry(Path(env["RECSVC_MODEL_REGISTRY"]))
    if len(registry.versions("churn")) < 2 and sh(
            [str(RECSVC), "train", "--model", "churn", "--no-promote", "--as-of", as_of],
            env, log) not in (0, 3):
        raise SystemExit("training a second churn version failed:\n" + tail(log))
    production = registry.production("churn")
    others = [v for v in registry.versions("churn") if v != production]
    return [*others[-1:], str(production)]


def requests(data_dir: Path, seed: int) -> tuple[list[bytes], list[bytes]]:
    """The serving bench's hint requests, and single churn requests for random members."""
    from recsvc.data import schema
    from recsvc.v1 import recsvc_pb2 as pb

    members = schema.read_table(data_dir, "members", ["member_id"])["member_id"].to_pylist()
    rng = random.Random(seed)
    churn = [pb.GetChurnRiskRequest(member_id=rng.choice(members)).SerializeToString()
             for _ in range(2000)]
    return build_requests(data_dir, seed, quick=False)["hint"], churn


def run_row(pool: Any, address: str, name: str, faults: Faults, payloads: dict[str, list[bytes]],
            args: argparse.Namespace) -> dict[str, Any]:
    inject, end = faults.table()[name]
    fault_s = max(args.fault, LONGER.get(name, 0.0))
    start = time.monotonic() + 2.0
    total = args.before + fault_s + args.after
    base = {"address": address, "start": start, "warmup": 0.0, "duration": total,
            "deadline": args.deadline, "concurrency": None, "advised": not args.no_retries}
    specs = [{**base, "method": f"/{SERVICE}/GetRedemptionHint", "payloads": payloads["hint"],
              "rate": args.rate, "clients": 2, "index": i,
              "response": "GetRedemptionHintResponse"} for i in range(2)]
    specs.append({**base, "method": f"/{SERVICE}/GetChurnRisk", "payloads": payloads["churn"],
                  "rate": args.rate / 5, "clients": 1, "index": 0,
                  "response": "GetChurnRiskResponse"})
    pending = pool.map_async(generate, specs, chunksize=1)
    time.sleep(max(0.0, start + args.before - time.monotonic()))
    fault_start = time.monotonic()
    inject()
    time.sleep(max(0.0, fault_start + fault_s - time.monotonic()))
    end()
    fault_end = time.monotonic()
    parts = pending.get()
    return summarise(name, parts, fault_start, fault_end)


def summarise(name: str, parts: list[dict[str, Any]], fault_start: float,
              fault_end: float) -> dict[str, Any]:
    intended = np.concatenate([p["intended"] for p in parts])
    done = np.concatenate([p["done"] for p in parts])
    degraded = np.concatenate([p["degraded"] for p in parts])
    codes = np.asarray([c for p in parts for c in p["codes"]], dtype=object)
    ok = codes == "OK"
    failed = Counter(str(c) for c in codes[~ok])
    during = ok & (intended >= fault_start) & (intended < fault_end)
    lat = (done - intended) * 1000
    bad = ~ok | degraded
    after = bad & (intended >= fault_end)
    recovery = float(intended[after].max() - fault_end) if after.any() else 0.0
    return {
        "fault": name, "calls": len(codes), "failed": int((~ok).sum()),
        "failed_by_code": dict(failed), "degraded": int((ok & degraded).sum()),
        "p99_during_ms": round(float(np.percentile(lat[during], 99)), 2) if during.any()
        else None,
        "p99_all_ms": round(float(np.percentile(lat[ok], 99)), 2) if ok.any() else None,
        "recovery_s": round(recovery, 2),
        "fault_s": round(fault_end - fault_start, 2),
    }


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, when: dt.datetime) -> str:
    lines = [
        "# Faults under load: calls failed, degraded, p99 and recovery per fault", "",
        f"Command: `python training/chaos.py --rate {args.rate:g} --workers {args.workers} "
        f"--before {args.before:g} --fault {args.fault:g} --after {args.after:g}"
        f"{' --no-retries' if args.no_retries else ''}` "
        f"(`make chaos`). Run {when:%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}.", "",
        f"Load: GetRedemptionHint at {args.rate:g}/s and GetChurnRisk at {args.rate / 5:g}/s, "
        "open loop, random members, deadline "
        f"{args.deadline:g} s, from 2 + 1 generator processes, "
        + ("without retries" if args.no_retries else "with the advised service config "
           "(`recsvc.serving.channel`: a read-only call that ends UNAVAILABLE is retried up "
           "to twice)") + f"; `recsvc serve --workers "
        f"{args.workers}` on a private Redis. Each row: {args.before:g} s before the fault, "
        f"{args.fault:g} s of fault, {args.after:g} s after. Recovery: seconds from the fault's "
        "end to the last failed or degraded answer. redis_restart_empty lasts 30 s: Redis is "
        "killed and started again empty at once, and `recsvc features` (which finds the "
        "store's fill mark gone) fills it again inside the fault; meanwhile members read as "
        "unknown are answered as cold starts (not flagged degraded), from the catalogue the "
        "service kept. model_swaps lasts 20 s: the two churn versions promoted in turn every "
        f"{SWAP_EVERY_S:g} s (ten promotions), the server looking for a new version every "
        "second, so each is loaded under load by both workers (from the compiled cache, "
        "warmed before the row as a deployment does before it promotes; the first compile of "
        "a version under load is not in this table).", "",
        "| fault | lasted s | calls | failed | failed by code | degraded | "
        "p99 during the fault ms | p99 of the row ms | recovery s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["failed_by_code"].items())) or "–"
        lines.append(f"| {r['fault']} | {r['fault_s']} | {r['calls']:,} | {r['failed']:,} | "
                     f"{codes} | "
                     f"{r['degraded']:,} | {r['p99_during_ms']} | {r['p99_all_ms']} | "
                     f"{r['recovery_s']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--rate", type=float, default=200.0, help="hints per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--fault", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=1.0)
    parser.add_argument("--faults", default="none,redis_sigstop,worker_sigkill,"
                                            "redis_restart_empty,model_swaps")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--no-retries", action="store_true",
                        help="callers without the advised service config (recsvc.serving."
                             "channel: read-only calls retried on UNAVAILABLE)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    log = Path(tempfile.gettempdir()) / f"recsvc-chaos-{os.getpid()}.log"
    port = free_port()
    env = service_env(data_dir, PROJECT, f"redis://127.0.0.1:{port}/0")
    # the models: a copy of the data's registry (promotions here leave the data's alone),
    # looked for every second, so each promotion is loaded while the load runs
    registry = Path(tempfile.mkdtemp(prefix="recsvc-chaos-models-")) / "models"
    shutil.copytree(data_dir / "models", registry)
    env |= {"RECSVC_MODEL_REGISTRY": str(registry), "RECSVC_MODEL_REFRESH_SECONDS": "1"}
    hints, churn = requests(data_dir, args.seed)
    rows: list[dict[str, Any]] = []
    print(f"chaos: server log {log}", flush=True)
    redis_proc = start_redis(port)
    faults = Faults(port, redis_proc, 0, env, log)
    if "model_swaps" in args.faults:
        from recsvc.models.scoring import features_as_of

        earlier = (features_as_of(data_dir) - dt.timedelta(days=30)).date().isoformat()
        faults.versions = second_churn_version(env, log, earlier)
        # both compiled into the cache first, as a deployment does before it promotes: a swap
        # row measures loading; the first compile of a version runs in a child process
        from recsvc.models.compiled import compile_in_child
        from recsvc.models.registry import MODEL_FILE

        for version in faults.versions:
            why = compile_in_child(registry / "churn" / version / MODEL_FILE, leaves=True)
            if why is not None:
                raise SystemExit(f"compiling churn {version} failed: {why}")
        print(f"chaos: churn versions to swap: {faults.versions}", flush=True)
    try:
        if sh([str(RECSVC), "features"], env, log):
            raise SystemExit("recsvc features into the private Redis failed:\n" + tail(log))
        address = f"127.0.0.1:{free_port()}"
        cmd = [str(RECSVC), "serve", "--address", address, "--metrics-port", "0",
               "--workers", str(args.workers)]
        ctx = multiprocessing.get_context("spawn")
        with server(cmd, env, address, log) as proc, ctx.Pool(3) as pool:
            faults.serve_pid = proc.pid
            for name in [f.strip() for f in args.faults.split(",") if f.strip()]:
                row = run_row(pool, address, name, faults, {"hint": hints, "churn": churn},
                              args)
                if name == "model_swaps":
                    row["fault"] = f"model_swaps ({faults.swaps} promotions)"
                rows.append(row)
                print(f"chaos: {name:20s} calls {row['calls']:6,}  failed {row['failed']:5,} "
                      f"{row['failed_by_code']}  degraded {row['degraded']:5,}  p99 during "
                      f"{row['p99_during_ms']} ms  recovery {row['recovery_s']} s", flush=True)
                time.sleep(2.0)
    finally:
        stop_redis(faults.redis)
        shutil.rmtree(registry.parent, ignore_errors=True)
    when = dt.datetime.now(dt.UTC)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.md").write_text(markdown(rows, args, when), encoding="utf-8")
    (args.out / "chaos.json").write_text(json.dumps({
        "run": when.isoformat(), "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"chaos: wrote {args.out / 'chaos.md'}")
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
