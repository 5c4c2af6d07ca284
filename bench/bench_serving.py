"""Benchmark the gRPC service under open-loop load, beside a bare grpc.aio echo server and Feast.

    python bench/bench_serving.py [--members 20000] [--days 400] [--data-dir DIR]
                                     [--no-redis] [--no-cluster]
                                     [--redis-url redis://127.0.0.1:6379/15]
                                     [--duration 15] [--warmup 3] [--workers 1] [--clients 2]
                                     [--profile] [--quick] [--rows ROW,...] [--out DIR]

`make bench` runs it. One run measures, on this machine and under the same load generator:
- the floors: bench/echo_server.py echoing a hint-sized request on each candidate transport
  (grpc.aio, grpc.aio on uvloop, grpcio's threaded server), the score floor: grpc.aio
  scoring one row of the production propensity model, compiled, per call, and the shell
  floor: recsvc's servicer (request parsed, bounds, admission, metrics, answer serialised)
  around a canned hint answer, so a hint's cost splits into the shell's and its own work;
- `recsvc serve` on SQLite, then on Redis (the same data dir materialised under a Feast project
  of the benchmark's own, whose keys are deleted afterwards; never FLUSHDB, Redis is shared),
  then on a Redis Cluster of the benchmark's own (three masters and three replicas on free
  ports, the tests' `redis_cluster`, killed afterwards; --no-cluster leaves it out):
  GetRedemptionHint at 500/s and saturated, BatchGetRedemptionHints (100 items) at 100/s,
  RecommendRedemptions (limit 200) at 100/s,
  OptimizeCartSplit (3 lines) at 200/s, BatchGetChurnRisk (1,000 members) at 10/s, GetNudges
  (in-app, a live balance that makes a low-balance or unlock nudge due, caps counted: a member
  asked again within the week is capped) at 200/s;
- Feast's own `get_online_features` in process, for 1 member (churn_v1) and 1 member + 200
  items (propensity_v1), the reads a recommendation needs.

The load comes from --clients separate processes, each with its own grpc.aio channel. Open
loop: every request has a fixed intended send time (the rate split across the processes), is
sent without waiting for earlier answers, and its latency is counted from that intended time,
so a stalled server cannot slow the generator down and hide its stall (no coordinated
omission). A pacing thread sleeps to each send time (clock_nanosleep, ~0.1 ms late) and hands
the call to the event loop, instead of asyncio timers that wake up to 1 ms late; the delay from
intended to actual send is reported per row ("sched lag"). Saturation is closed loop:
--concurrency callers in all, each sending its next request when the last one answers.
A warm-up (--warmup s) precedes each --duration s measurement window. Every service row is
probed first with a few calls one at a time: UNIMPLEMENTED rows are reported, not run; a
degraded answer is flagged; the idle single-call latency goes into the notes. --workers N runs
`recsvc serve --workers N` and the echo server with as many processes.

Every row also gives the server's CPU per answer: the CPU seconds of the server's process tree
(/proc) over the row, warm-up included, divided by the answers.

Writes serving.json and serving.md, with the goals as ratios to the floors measured in the same
run, to bench/results/ when every option is at its default (the run the committed numbers
describe), else to a folder under the system's temporary directory, printed at the start
(--quick, --rows, other sizes or durations: benchutil's one rule); --out DIR writes there.
--profile runs each service row a second time, right after the first, under py-spy (`py-spy
record --pid --subprocesses`; py-spy is pinned in requirements.lock, so `make install` puts it
in .venv) and writes the collapsed stacks under the results folder's profiles/ and their
summary (the functions with the most self time, and the recsvc frames with the most inclusive
time) into the report; the table's numbers come from the rows run without the profiler. --rows
runs only the named rows and floors (e.g. `--rows echo,score,hint_500,hint_saturated`, no Feast
SDK reference).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import multiprocessing
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchutil import (  # a sibling module: run as training/<script>.py
    OUT_HELP,
    choose_out,
    cpu_model,
    exit_on_sigterm,
    population,
    save_results,
)
from recsvc.v1 import recsvc_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RECSVC = BIN / "recsvc"
ECHO = Path(__file__).resolve().parent / "echo_server.py"
SERVICE = "recsvc.v1.RedemptionService"
ECHO_METHOD = "/bench.Echo/Echo"
SQLITE_PROJECT = "recsvc"  # the Settings default: what `recsvc features` fills without a name
DEADLINE_S = 5.0
# goals of the serving-floor issue, as ratios to floors measured in the same run
HINT_P99_VS_ECHO = 1.5
SATURATED_VS_ECHO = 0.6
SATURATED_VS_SCORE = 0.85
HINTS_BATCH_P99_MS = 3.0
RECOMMEND_P99_MS = 3.0
RECOMMEND_VS_SDK = 5.0
CHURN_BATCH_MS = 40.0
ITEMS_PER_RECOMMENDATION = 200
ITEMS_PER_HINT_BATCH = 100
CHURN_BATCH = 1000
# the floors: (row group, echo_server.py --transport, whether it scores one model row a call);
# "echo" (grpc.aio, what recsvc serves with) is the reference of the goals; "shell" is
# recsvc's servicer around a canned hint answer (what a hint costs before its own work)
FLOORS = (("echo", "aio", False), ("echo-uvloop", "uvloop", False),
          ("echo-sync", "sync", False), ("score", "aio", True), ("shell", "shell", False))
FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")  # py-spy's "function (file:line)"


@dataclass
class Scenario:
    key: str  # "hint_500": the row's name in the JSON
    rpc: str
    load: str  # "500/s" or "c=50", for the table
    payloads: list[bytes]
    rate: float | None = None  # open loop
    concurrency: int | None = None  # closed loop (saturation)
    response: Any = None  # the reply's message class, to decode the probe's answer
    method: str = ""

    def __post_init__(self) -> None:
        self.method = self.method or f"/{SERVICE}/{self.rpc}"


@dataclass
class Timing:
    warmup: float
    duration: float
    clients: int
    deadline: float = DEADLINE_S


# --------------------------------------------------------------------------------------------
# The load generator: runs in the pool's processes (spawned: they import this module afresh).
# --------------------------------------------------------------------------------------------
def _ready(_: int) -> int:
    return os.getpid()


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """One generator process's share of one row; returns raw timings for the parent."""
    sys.setswitchinterval(0.0005)  # the pacing thread gets the GIL back quickly
    return asyncio.run(_generate(spec))


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    options: list[tuple[str, Any]] = []
    if spec.get("advised"):  # the client set-up recsvc advises: calls retried (channel.py)
        from recsvc.transport.channel import options as advised

        # balanced: a target of several replicas, each left out while it drains
        options = advised(balanced=spec.get("balanced", False))
    # "connections": this process's calls spread over that many channels, each with a TCP
    # connection of its own (channels with the same options share one otherwise). A server of
    # several workers on one port (SO_REUSEPORT) gets each connection's calls in one worker,
    # so a load of a few connections can fall on one worker; many callers spread.
    connections = spec.get("connections", 1)
    if connections > 1:
        options = [*options, ("grpc.use_local_subchannel_pool", 1)]
    async with contextlib.AsyncExitStack() as stack:
        calls = []
        for _ in range(connections):
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(spec["address"], options=options or None))
            await asyncio.wait_for(channel.channel_ready(), 10)
            call = channel.unary_unary(spec["method"])  # bytes in, bytes out: no protobuf
            with contextlib.suppress(grpc.aio.AioRpcError):  # the probe says how it fares
                await call(spec["payloads"][0], timeout=spec["deadline"])
            calls.append(call)
        spread = calls[0] if connections == 1 else _round_robin(calls)
        if spec["rate"]:
            return await _open_loop(spec, spread)
        return await _closed_loop(spec, spread)


def _round_robin(calls: list[Any]) -> Any:
    turn = itertools.cycle(calls)

    def call(*args: Any, **kwargs: Any) -> Any:
        return next(turn)(*args, **kwargs)
    return call


async def _open_loop(spec: dict[str, Any], call: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    payloads, deadline = spec["payloads"], spec["deadline"]
    clients, index = spec["clients"], spec["index"]
    interval = clients / spec["rate"]
    first = spec["start"] + index / spec["rate"]  # the processes' sends interleave
    end = spec["start"] + spec["warmup"] + spec["duration"]
    n = max(0, math.ceil((end - first) / interval))
    intended = first + np.arange(n) * interval
    which = (np.arange(n) * clients + index) % len(payloads)  # each call's payload
    sent = np.full(n, np.nan)
    done = np.full(n, np.nan)
    codes: list[str] = ["UNFINISHED"] * n
    degraded = np.zeros(n, dtype=bool)
    # with "response" (a recsvc.v1 message name), answers are decoded for their degraded flag
    decode = _decoder(spec.get("response"))
    # "keep_replies": the answers come back too (the chaos harness checks the nudges granted)
    replies: list[bytes | None] | None = [None] * n if spec.get("keep_replies") else None
    # "cancel_within" (s): each call is cancelled by its caller at a random moment within it
    cancel_within = spec.get("cancel_within")
    rng = random.Random(index)
    tasks: set[asyncio.Task[None]] = set()

    async def one(k: int) -> None:
        sent[k] = time.monotonic()
        try:
            pending = call(payloads[which[k]], timeout=deadline)
            if cancel_within is not None:
                loop.call_later(rng.uniform(0, cancel_within), pending.cancel)
            reply = await pending
            code = "OK"
            if decode is not None:
                degraded[k] = decode(reply)
            if replies is not None:
                replies[k] = reply
        except asyncio.CancelledError:
            if cancel_within is None:  # not ours: the row is over
                raise
            code = "CANCELLED"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        done[k] = time.monotonic()
        codes[k] = code

    def launch(k: int) -> None:
        task = loop.create_task(one(k))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    paced = asyncio.Event()

    def pace() -> None:
        for k in range(n):
            delay = intended[k] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(launch, k)
        loop.call_soon_threadsafe(paced.set)

    thread = threading.Thread(target=pace, name="pacer", daemon=True)
    thread.start()
    await paced.wait()
    thread.join()
    if tasks:
        await asyncio.wait(list(tasks), timeout=deadline + 1)
    for task in list(tasks):
        task.cancel()
    keep = intended >= spec["start"] + spec["warmup"]
    return {"intended": intended[keep], "sent": sent[keep], "done": done[keep],
            "codes": [c for c, k in zip(codes, keep, strict=True) if k],
            "degraded": degraded[keep],
            "payload": which[keep],
            "replies": None if replies is None else [r for r, k in zip(replies, keep,
                                                                      strict=True) if k]}


def _decoder(name: str | None) -> Any:
    """bytes -> the answer's `degraded` flag, for a recsvc.v1 response message name."""
    if not name:
        return None
    from recsvc.v1 import recsvc_pb2 as pb

    cls = getattr(pb, name)
    return lambda data: bool(cls.FromString(data).degraded)


async def _closed_loop(spec: dict[str, Any], call: Any) -> dict[str, Any]:
    payloads, deadline = spec["payloads"], spec["deadline"]
    clients, index, total = spec["clients"], spec["index"], spec["concurrency"]
    mine = total // clients + (1 if index < total % clients else 0)
    window = spec["start"] + spec["warmup"]
    end = window + spec["duration"]
    starts: list[float] = []
    ends: list[float] = []
    codes: list[str] = []
    await asyncio.sleep(max(0.0, spec["start"] - time.monotonic()))

    async def caller(w: int) -> None:
        k = w * clients + index
        while (t0 := time.monotonic()) < end:
            try:
                await call(payloads[k % len(payloads)], timeout=deadline)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            t1 = time.monotonic()
            if t0 >= window:
                starts.append(t0)
                ends.append(t1)
                codes.append(code)
            k += total

    await asyncio.gather(*(caller(w) for w in range(mine)))
    return {"intended": np.asarray(starts), "sent": np.asarray(starts),
            "done": np.asarray(ends), "codes": codes}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process and its live descendants have used."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after "(comm)": state, ppid (2nd), ... utime (12th), stime (13th)
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
            todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def run_load(pool: Any, address: str, sc: Scenario, timing: Timing,
             one_call_s: float = 0.0, server_pid: int | None = None) -> dict[str, Any]:
    """Drive one row from every generator process and summarise it; with `server_pid`, the
    server process tree's CPU per answer (warm-up included, as its answers are)."""
    cpu = tree_cpu_s(server_pid) if server_pid else None
    # the processes connect and make one call first (`one_call_s`: how long one takes)
    start = time.monotonic() + 1.5 + min(one_call_s, 10.0)
    specs = [{"address": address, "method": sc.method, "payloads": sc.payloads,
              "rate": sc.rate, "concurrency": sc.concurrency, "start": start,
              "warmup": timing.warmup, "duration": timing.duration, "deadline": timing.deadline,
              "clients": timing.clients, "index": i} for i in range(timing.clients)]
    parts = pool.map(generate, specs, chunksize=1)
    window = (start + timing.warmup, start + timing.warmup + timing.duration)
    out = summarise(parts, window, timing.duration, open_loop=bool(sc.rate))
    if server_pid and cpu is not None and out["n"]:
        out["cpu_us_per_answer"] = round((tree_cpu_s(server_pid) - cpu) * 1e6 / out["n"], 1)
    return out


def summarise(parts: list[dict[str, Any]], window: tuple[float, float], duration: float,
              *, open_loop: bool) -> dict[str, Any]:
    intended = np.concatenate([p["intended"] for p in parts])
    sent = np.concatenate([p["sent"] for p in parts])
    done = np.concatenate([p["done"] for p in parts])
    codes = np.asarray([c for p in parts for c in p["codes"]], dtype=object)
    ok = codes == "OK"
    lat = (done[ok] - intended[ok]) * 1000
    counted = ok & (done >= window[0]) & (done < window[1])
    out: dict[str, Any] = {
        "n": int(ok.sum()), "sent": len(codes),
        "req_per_s": round(float(counted.sum()) / duration, 1),
        "errors": dict(Counter(str(c) for c in codes[~ok])),
    }
    if len(lat):
        out |= {"p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "max_ms": round(float(lat.max()), 3), "mean_ms": round(float(lat.mean()), 3)}
    if len(lat):
        # when the slowest answers were due (s into the window): a period shows a timer's work
        due = intended[ok] - window[0]
        worst = np.argsort(lat)[-5:][::-1]
        out["worst"] = [[round(float(due[i]), 3), round(float(lat[i]), 2)] for i in worst]
    if open_loop:
        lag = (sent[~np.isnan(sent)] - intended[~np.isnan(sent)]) * 1000
        if len(lag):
            out |= {"lag_p50_ms": round(float(np.percentile(lag, 50)), 3),
                    "lag_p99_ms": round(float(np.percentile(lag, 99)), 3),
                    "lag_max_ms": round(float(lag.max()), 3)}
    return out


# --------------------------------------------------------------------------------------------
# Servers: started as subprocesses in their own session, always stopped.
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path,
                 timeout: float = 180.0) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    limit = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < limit:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before serving:\n"
                                   + tail(log))
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"server not SERVING on {address} after {timeout:.0f} s:\n" + tail(log))


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM to the server's process group (it drains), SIGKILL after `grace`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers the server may have left
    proc.wait()


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], address: str, log: Path,
           ) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_serving(address, proc, log)
        yield proc
    finally:
        stop(proc)


def service_env(data_dir: Path, project: str, redis_url: str | None,
                repo: Path = ROOT / "feature_repo") -> dict[str, str]:
    """The environment of a recsvc subprocess: none of the caller's RECSVC_* leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    env |= {"RECSVC_DATA_DIR": str(data_dir), "RECSVC_FEATURE_REPO": str(repo),
            "RECSVC_FEAST_PROJECT": project, "PYTHONUNBUFFERED": "1"}
    if redis_url:
        env["RECSVC_REDIS_URL"] = redis_url
    return env


def serve_cmd(address: str, workers: int) -> list[str]:
    cmd = [str(RECSVC), "serve", "--address", address, "--metrics-port", "0"]
    return cmd + (["--workers", str(workers)] if workers > 1 else [])


# --------------------------------------------------------------------------------------------
# Data, requests and the Feast SDK reference.
# --------------------------------------------------------------------------------------------
def sh(cmd: list[str], env: dict[str, str], log: Path) -> int:
    print(f"$ {shlex.join(cmd[1:] if cmd[0] == str(RECSVC) else cmd)}", flush=True)
    t = time.perf_counter()
    with log.open("ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        rc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            check=False).returncode
    print(f"  exit {rc} in {time.perf_counter() - t:.1f} s", flush=True)
    return rc


def production(env: dict[str, str], model: str) -> str | None:
    out = subprocess.run([str(RECSVC), "models", "list", model], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("*"):
            return line.split()[2]
    return None


def prepare(args: argparse.Namespace, data_dir: Path, log: Path) -> dict[str, str | None]:
    """Tables and SQLite features (what `make run` does), models trained unless promoted."""
    env = service_env(data_dir, SQLITE_PROJECT, None)
    sizes = population(data_dir, members=args.members, days=args.days, seed=args.seed)
    if sh([str(RECSVC), "features", *(a for k, v in sizes.items() for a in (f"--{k}", str(v)))],
          env, log):
        raise RuntimeError("recsvc features failed:\n" + tail(log))
    if not (production(env, "churn") and production(env, "propensity")):
        rc = sh([str(RECSVC), "train"], env, log)
        if rc not in (0, 3):
            raise RuntimeError("recsvc train failed:\n" + tail(log))
    models = {m: production(env, m) for m in ("churn", "propensity")}
    for name, version in models.items():
        if version is None:
            print(f"warning: no production {name} model: the service answers degraded")
    return models


def propensity_model(data_dir: Path) -> Path | None:
    """The production propensity model's LightGBM file (what the score floor scores)."""
    from recsvc.adapters.registry import MODEL_FILE, Registry

    registry = Registry(data_dir / "models")
    version = registry.production("propensity")
    if version is None:
        return None
    return Path(registry.load("propensity", version).directory) / MODEL_FILE


def build_requests(data_dir: Path, seed: int, quick: bool) -> dict[str, list[bytes]]:
    from recsvc.data import schema

    members = schema.read_table(data_dir, "members", ["member_id"])["member_id"].to_pylist()
    table = schema.read_table(data_dir, "items", ["item_id", "market_price_minor"])
    items = table["item_id"].to_pylist()
    price = dict(zip(items, table["market_price_minor"].to_pylist(), strict=True))
    rng = random.Random(seed)
    n = 500 if quick else 5000
    return {
        "hint": [pb.GetRedemptionHintRequest(member_id=rng.choice(members),
                                             item_id=rng.choice(items)).SerializeToString()
                 for _ in range(n)],
        "hints100": [pb.BatchGetRedemptionHintsRequest(
            member_id=rng.choice(members),
            item_ids=rng.sample(items, ITEMS_PER_HINT_BATCH)).SerializeToString()
            for _ in range(n // 10)],
        "recommend": [pb.RecommendRedemptionsRequest(
            member_id=rng.choice(members), limit=ITEMS_PER_RECOMMENDATION).SerializeToString()
            for _ in range(n)],
        "cart": [pb.OptimizeCartSplitRequest(member_id=rng.choice(members), lines=[
            pb.CartLine(item_id=i, unit_price_minor=price[i], quantity=1, points_eligible=True)
            for i in rng.sample(items, 3)]).SerializeToString() for _ in range(n)],
        "churn": [pb.BatchGetChurnRiskRequest(
            member_ids=rng.sample(members, min(CHURN_BATCH, len(members)))).SerializeToString()
            for _ in range(50)],
        "nudges": nudge_requests(members, rng, n),
    }


def nudge_requests(members: list[int], rng: random.Random, n: int) -> list[bytes]:
    """`n` GetNudges requests for random `members`, in app, with a live balance from the
    caller: the simulated points have lapsed by the server's clock, and these make every call
    due a nudge (low balance: ranked options; close to the 2,000 unlock: none), counted in
    the caps (a member asked again: capped)."""
    return [pb.GetNudgesRequest(
        member_id=rng.choice(members), channel=pb.CHANNEL_IN_APP,
        context=pb.RequestContext(points_balance=rng.choice(
            [rng.randint(1, 99), rng.randint(1_600, 1_999)]))).SerializeToString()
        for _ in range(n)]


def sdk_reference(data_dir: Path, project: str, redis_url: str | None, reads: int,
                  seed: int) -> dict[str, Any]:
    """Feast's get_online_features in this process, the feature service fetched once (the
    SDK's own read path, without recsvc's per-call registry look-up)."""
    from bench_online import percentiles, settings, time_requests
    from recsvc.adapters import feast as store
    from recsvc.data import schema

    members = schema.read_table(data_dir, "members", ["member_id"])["member_id"].to_pylist()
    items = schema.read_table(data_dir, "items", ["item_id"])["item_id"].to_pylist()
    fs = store.open_store(settings(data_dir, project, redis_url))
    churn = fs.get_feature_service("churn_v1")
    propensity = fs.get_feature_service("propensity_v1")

    def member(m: int, _: list[int]) -> Any:
        return fs.get_online_features(features=churn, entity_rows=[{"member_id": m}],
                                      full_feature_names=True).to_dict()

    def member_items(m: int, its: list[int]) -> Any:
        return fs.get_online_features(
            features=propensity, entity_rows=[{"member_id": m, "item_id": i} for i in its],
            full_feature_names=True).to_dict()

    rng = random.Random(seed)
    warmup = max(20, reads // 10)
    requests = [(rng.choice(members), rng.sample(items, min(ITEMS_PER_RECOMMENDATION, len(items))))
                for _ in range(warmup + reads)]
    out = {"member": percentiles(time_requests(member, requests, warmup)),
           "member_items": percentiles(time_requests(member_items, requests, warmup))}
    for what, r in out.items():
        print(f"  Feast SDK {what:12s} p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms")
    return out


def probe(address: str, sc: Scenario) -> dict[str, Any]:
    """A few calls, one at a time, before the load: implemented? degraded? how many answers?
    how long does one call take on an idle server (the median after the first)? `code` is the
    first call's; a later call's failure (a lone caller refused) goes into `later`."""
    times: list[float] = []
    raw = b""
    later: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(sc.method)
        for i in range(5):
            t = time.perf_counter()
            try:
                raw = call(sc.payloads[i % len(sc.payloads)], timeout=60)
            except grpc.RpcError as exc:
                if i == 0:
                    return {"code": exc.code().name, "details": exc.details()}
                later = {"call": i + 1, "code": exc.code().name, "details": exc.details()}
                break
            times.append(time.perf_counter() - t)
            if sum(times) > 2.0:
                break
    out: dict[str, Any] = {"code": "OK",
                           "single_ms": round(float(np.median(times[1:] or times)) * 1000, 2)}
    if later:
        out["later"] = later
    if sc.response is not None:
        reply = sc.response.FromString(raw)
        if getattr(reply, "degraded", False):
            out["degraded"] = [pb.DegradedReason.Name(r) for r in reply.degraded_reasons]
        for name in ("options", "risks", "lines", "nudges", "hints"):
            if hasattr(reply, name):
                out[name] = len(getattr(reply, name))
    return out


def scenarios(requests: dict[str, list[bytes]], concurrency: int) -> list[Scenario]:
    return [
        Scenario("hint_500", "GetRedemptionHint", "500/s", requests["hint"], rate=500,
                 response=pb.GetRedemptionHintResponse),
        Scenario("hint_saturated", "GetRedemptionHint", f"c={concurrency}", requests["hint"],
                 concurrency=concurrency, response=pb.GetRedemptionHintResponse),
        Scenario("hints100_100", "BatchGetRedemptionHints",
                 f"100/s, {ITEMS_PER_HINT_BATCH} items", requests["hints100"], rate=100,
                 response=pb.BatchGetRedemptionHintsResponse),
        Scenario("recommend_200_100", "RecommendRedemptions", "100/s, limit 200",
                 requests["recommend"], rate=100, response=pb.RecommendRedemptionsResponse),
        Scenario("cart_200", "OptimizeCartSplit", "200/s, 3 lines", requests["cart"], rate=200,
                 response=pb.OptimizeCartSplitResponse),
        Scenario("churn_1000_10", "BatchGetChurnRisk", "10/s, 1,000 members", requests["churn"],
                 rate=10, response=pb.BatchGetChurnRiskResponse),
        Scenario("nudges_200", "GetNudges", "200/s, caps counted", requests["nudges"],
                 rate=200, response=pb.GetNudgesResponse),
    ]


def echo_scenarios(requests: dict[str, list[bytes]], concurrency: int, *,
                   slow_rates: bool = False) -> list[Scenario]:
    """The floor's rows: the hint requests themselves as payloads (the same bytes on the wire
    as the hint rows); with `slow_rates`, also the rates of the batch rows with their requests,
    the floor under their absolute goals (at 100/s a process idles between calls and each
    call pays for waking it: the floor's p99 is higher there than at 500/s)."""
    rows = [Scenario("echo_500", "Echo", "500/s", requests["hint"], rate=500,
                     method=ECHO_METHOD),
            Scenario("echo_saturated", "Echo", f"c={concurrency}", requests["hint"],
                     concurrency=concurrency, method=ECHO_METHOD)]
    if slow_rates:
        rows += [Scenario("echo_100", "Echo", f"100/s, {ITEMS_PER_HINT_BATCH}-item requests",
                          requests["hints100"], rate=100, method=ECHO_METHOD),
                 Scenario("echo_10", "Echo", f"10/s, {CHURN_BATCH:,}-member requests",
                          requests["churn"], rate=10, method=ECHO_METHOD)]
    return rows


def report_row(store: str, sc: Scenario, r: dict[str, Any]) -> None:
    if "p50_ms" not in r:
        print(f"{store:6s} {sc.rpc:22s} {sc.load:22s} {_why_none(r)}", flush=True)
        return
    print(f"{store:6s} {sc.rpc:22s} {sc.load:22s} p50 {r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f}"
          f"  max {r['max_ms']:8.2f} ms  {r['req_per_s']:8.1f}/s  errors {r['errors'] or 0}"
          + (f"  lag p99 {r['lag_p99_ms']:.2f} ms" if "lag_p99_ms" in r else "")
          + (f"  cpu {r['cpu_us_per_answer']:,.0f} us/answer" if "cpu_us_per_answer" in r
             else ""), flush=True)


def measure_service(pool: Any, address: str, rows: list[Scenario], timing: Timing,
                    store: str, profile: tuple[subprocess.Popen[bytes], Path] | None = None,
                    server_pid: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each row: probe, load; with `profile` (the server, a folder), the row again under
    py-spy right after it, so a backlog a row leaves behind lands in its own profile."""
    out: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    for sc in rows:
        p = probe(address, sc)
        row: dict[str, Any] = {"rpc": sc.rpc, "load": sc.load, "probe": p}
        if p["code"] == "UNIMPLEMENTED":
            row["note"] = "not implemented"
        else:
            row |= run_load(pool, address, sc, timing, p.get("single_ms", 0) / 1000,
                            server_pid)
        out[sc.key] = row
        report_row(store, sc, row)
        if profile is not None and p["code"] != "UNIMPLEMENTED":
            profiles[sc.key] = profile_row(pool, address, profile[0], sc, timing, store,
                                           profile[1], p.get("single_ms", 0) / 1000)
    return out, profiles


# --------------------------------------------------------------------------------------------
# Profiles (--profile): py-spy attached to the server while a row runs again.
# --------------------------------------------------------------------------------------------
def py_spy() -> str | None:
    return shutil.which("py-spy", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def profile_row(pool: Any, address: str, proc: subprocess.Popen[bytes], sc: Scenario,
                timing: Timing, store: str, out_dir: Path, one_call_s: float) -> dict[str, Any]:
    spy = py_spy()
    assert spy is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"serving-{store}-{sc.key}.txt"
    path.unlink(missing_ok=True)
    spy_cmd = [spy, "record", "--pid", str(proc.pid), "--subprocesses", "--nonblocking",
               "--rate", "250", "--format", "raw", "--duration",
               str(math.ceil(timing.warmup + timing.duration + 3 + min(one_call_s, 10.0))),
               "--output", str(path)]
    with subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as recorder:
        try:
            r = run_load(pool, address, sc, timing, one_call_s)
        finally:
            try:
                _, err = recorder.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                _, err = recorder.communicate()
    if not path.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    print(f"  profile {store} {sc.key}: {path}", flush=True)
    return {"file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "under_profiler": {k: r.get(k) for k in ("p50_ms", "p99_ms", "req_per_s")},
            **top_frames(path)}


def top_frames(path: Path, n: int = 12) -> dict[str, Any]:
    """Self and inclusive shares of the functions in py-spy's collapsed stacks (lines of
    `frame;frame;... count`, a frame `function (file:line)`), by function and file."""
    self_: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # process frames (with --subprocesses) hold command lines, which may hold ";"
        frames = [FRAME.sub(r"\1 (\2)", f) for f in stack.split(";")
                  if FRAME.match(f) and not f.startswith("process ")]
        if not frames:
            continue
        total += int(count)
        self_[frames[-1]] += int(count)
        for f in set(frames):
            if "recsvc/" in f:  # where the service's own code spends it
                inclusive[f] += int(count)

    def share(c: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * s / total, 1)] for f, s in c.most_common(n)] if total else []

    return {"samples": total, "self": share(self_), "recsvc_inclusive": share(inclusive)}


# --------------------------------------------------------------------------------------------
# Goals and the report.
# --------------------------------------------------------------------------------------------
def _why_none(row: dict[str, Any]) -> str:
    """Why a row has no latency: not implemented, or every call failed."""
    if row.get("note"):
        return str(row["note"])
    errors = ", ".join(f"{k} {v}" for k, v in row.get("errors", {}).items())
    single = row.get("probe", {}).get("single_ms")
    return f"no answers ({errors or 'none sent'})" + (
        f"; one call alone took {single:,.0f} ms" if single is not None else "")


def _ratio_goal(num: dict[str, Any], den: dict[str, Any], key: str, limit: float,
                at_least: bool) -> dict[str, Any] | None:
    """num[key] / den[key] against `limit`; None when neither row ran."""
    if num.get(key) and den.get(key):
        ratio = num[key] / den[key]
        return {"value": round(ratio, 3), "met": ratio >= limit if at_least else ratio <= limit}
    if num:
        return {"value": None, "met": False, "note": _why_none(num)}
    return None


def _ms_goal(row: dict[str, Any], limit_ms: float,
             floor: dict[str, Any]) -> dict[str, Any] | None:
    """row's p99 against `limit_ms`, with the p99 of the echo floor at the row's rate beside
    it (`floor`, when it ran): a floor over the limit already misses the goal itself."""
    out: dict[str, Any]
    if "p99_ms" in row:
        out = {"value": row["p99_ms"], "met": row["p99_ms"] <= limit_ms}
    elif row:
        out = {"value": None, "met": False, "note": _why_none(row)}
    else:
        return None
    if "p99_ms" in floor:  # "under_floor": the floor itself misses the goal in this run
        out |= {"floor_p99_ms": floor["p99_ms"], "under_floor": floor["p99_ms"] > limit_ms}
    return out


def goals(result: dict[str, Any]) -> dict[str, Any]:
    floors = {name for name, _, _ in FLOORS}
    echo = result["rows"].get("echo", {})
    e500, esat = echo.get("echo_500", {}), echo.get("echo_saturated", {})
    e100, e10 = echo.get("echo_100", {}), echo.get("echo_10", {})
    ssat = result["rows"].get("score", {}).get("echo_saturated", {})
    out: dict[str, Any] = {}
    for store, rows in result["rows"].items():
        if store in floors:
            continue
        h500, hsat = rows.get("hint_500", {}), rows.get("hint_saturated", {})
        rec = rows.get("recommend_200_100", {})
        sdk = result["sdk"].get(store, {}).get("member_items", {})
        g = {
            "hint_p99": _ratio_goal(h500, e500, "p99_ms", HINT_P99_VS_ECHO, False),
            "hint_saturated": _ratio_goal(hsat, esat, "req_per_s", SATURATED_VS_ECHO, True),
            "hint_vs_score": _ratio_goal(hsat, ssat, "req_per_s", SATURATED_VS_SCORE, True),
            "hints100_p99": _ms_goal(rows.get("hints100_100", {}), HINTS_BATCH_P99_MS, e100),
            "recommend_p99": _ms_goal(rec, RECOMMEND_P99_MS, e100),
            "churn_batch": _ms_goal(rows.get("churn_1000_10", {}), CHURN_BATCH_MS, e10),
        }
        if "p99_ms" in rec and "p50_ms" in sdk:
            ratio = sdk["p50_ms"] / rec["p99_ms"]
            g["recommend_vs_sdk"] = {"value": round(ratio, 2), "met": ratio >= RECOMMEND_VS_SDK}
        out[store] = {k: v for k, v in g.items() if v is not None}
    return out


def _ms(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.2f}" if key in r else "–"


def markdown(result: dict[str, Any]) -> str:
    m, p = result["machine"], result["params"]
    models = p.get("models", {})
    lines = [
        "# gRPC serving: recsvc beside bare echo servers (grpc.aio, uvloop, sync; one scoring a "
        "model row; recsvc's servicer around a canned hint) and the Feast SDK",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, grpcio {m['grpcio']}, "
        f"Feast {m['feast']}; server, Redis and load generator share the machine.  ",
        f"Command: `{result['command']}`  ",
        f"Population: {p['members']:,} members, {p['items']:,} items; models: churn "
        f"{models.get('churn') or 'none'}, propensity {models.get('propensity') or 'none'}. "
        f"Server: `recsvc serve` with {p['workers']} worker process(es) on the "
        f"{p.get('event_loop', 'asyncio')} event loop; echo server with the "
        f"same. Load: {p['clients']} generator processes, {p['warmup']:g} s warm-up then "
        f"{p['duration']:g} s measured per row. Run {result['finished']}.",
        "",
        "Latency in ms from the request's intended send time (open loop) or from its send "
        "(saturated, closed loop with c callers); req/s = answers inside the window; answers = "
        "the latencies' count; "
        "sched lag = how late the generator sent (p99).",
        "",
        "| store | RPC | load | p50 | p99 | max | req/s | answers | server CPU µs/answer "
        "| errors | sched lag p99 | notes |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for store, rows in result["rows"].items():
        for r in rows.values():
            notes = [r["note"]] if r.get("note") else []
            pr = r.get("probe", {})
            if pr.get("degraded"):
                notes.append("degraded: " + ", ".join(pr["degraded"]))
            if pr.get("code") not in (None, "OK", "UNIMPLEMENTED"):
                notes.append(f"probe {pr['code']}: {pr.get('details', '')}")
            if pr.get("later"):
                notes.append(f"one caller alone, call {pr['later']['call']}: "
                             f"{pr['later']['code']}: {pr['later']['details']}")
            for k in ("options", "risks", "nudges"):
                if k in pr:
                    notes.append(f"{pr[k]} {k}")
            if "single_ms" in pr:
                notes.append(f"one call alone {pr['single_ms']:,.2f} ms")
            errors = ", ".join(f"{k} {v}" for k, v in r.get("errors", {}).items()) or "0"
            rps = f"{r['req_per_s']:,.0f}" if "req_per_s" in r else "–"
            lines.append(f"| {store} | {r['rpc']} | {r['load']} | {_ms(r, 'p50_ms')} | "
                         f"{_ms(r, 'p99_ms')} | {_ms(r, 'max_ms')} | {rps} | {r.get('n', '–')} | "
                         f"{r.get('cpu_us_per_answer', '–')} | "
                         f"{errors if 'sent' in r else '–'} | {_ms(r, 'lag_p99_ms')} | "
                         f"{'; '.join(notes)} |")
    lines += ["", "Feast SDK reference, in process (`get_online_features` with the feature "
              "service fetched once, `.to_dict()`), ms:", "",
              "| store | read | p50 | p99 | max | reads |", "|---|---|---:|---:|---:|---:|"]
    labels = {"member": "1 member (churn_v1)",
              "member_items": f"1 member + {ITEMS_PER_RECOMMENDATION} items (propensity_v1)"}
    for store, reads in result["sdk"].items():
        for what, r in reads.items():
            lines.append(f"| {store} | {labels[what]} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['max_ms']:.2f} | {r['n']:,} |")
    echo = result["rows"].get("echo", {})
    e500, esat = echo.get("echo_500", {}), echo.get("echo_saturated", {})
    stores = list(result["goals"])
    lines += ["", "## Goals (ratios to the echo server measured in this run)", "",
              "| goal | " + " | ".join(stores) + " |", "|---|" + "---|" * len(stores)]

    def cell(store: str, key: str, fmt: str) -> str:
        g = result["goals"][store].get(key)
        if g is None:
            return "not measured"
        floor = ""
        if "floor_p99_ms" in g:  # the echo's p99 at the row's rate
            floor = (f" (echo at this rate: p99 {g['floor_p99_ms']:.2f} ms"
                     + (", itself over the goal)" if g["under_floor"] else ")"))
        if g["value"] is None:
            return f"MISSED: {g.get('note', '')}{floor}"
        return f"{fmt.format(g['value'])} — {'met' if g['met'] else 'MISSED'}{floor}"

    e99 = e500.get("p99_ms", float("nan"))
    erps = esat.get("req_per_s", float("nan"))
    srps = result["rows"].get("score", {}).get("echo_saturated", {}).get("req_per_s",
                                                                         float("nan"))
    goal_rows = [
        (f"hint p99 at 500/s ≤ {HINT_P99_VS_ECHO:g}× echo p99 ({e99:.2f} ms)", "hint_p99",
         "{:.2f}×"),
        (f"saturated hints/s ≥ {SATURATED_VS_ECHO:.0%} of echo's ({erps:,.0f}/s)",
         "hint_saturated", "{:.0%}"),
        (f"saturated hints/s ≥ {SATURATED_VS_SCORE:.0%} of the score floor's ({srps:,.0f}/s)",
         "hint_vs_score", "{:.0%}"),
        (f"{ITEMS_PER_HINT_BATCH}-item hint batch p99 at 100/s ≤ {HINTS_BATCH_P99_MS:g} ms",
         "hints100_p99", "{:.2f} ms"),
        (f"{ITEMS_PER_RECOMMENDATION}-item recommendation p99 ≤ {RECOMMEND_P99_MS:g} ms",
         "recommend_p99", "{:.2f} ms"),
        (f"… ≥ {RECOMMEND_VS_SDK:g}× under the Feast SDK's p50 for reading "
         f"{ITEMS_PER_RECOMMENDATION} items", "recommend_vs_sdk", "{:.1f}×"),
        (f"{CHURN_BATCH:,}-member churn batch p99 ≤ {CHURN_BATCH_MS:g} ms", "churn_batch",
         "{:.1f} ms"),
    ]
    for label, key, fmt in goal_rows:
        lines.append(f"| {label} | " + " | ".join(cell(s, key, fmt) for s in stores) + " |")
    if result.get("profiles"):
        lines += ["", "## Profiles (py-spy, the rows run again under the profiler)", ""]
        for store, rows in result["profiles"].items():
            for key, prof in rows.items():
                if "error" in prof:
                    lines.append(f"- {store} {key}: py-spy failed: {prof['error']}")
                    continue
                top = ", ".join(f"`{f}` {s}%" for f, s in prof["self"][:5])
                own = ", ".join(f"`{f}` {s}%" for f, s in prof["recsvc_inclusive"][:5])
                lines.append(f"- {store} {key} ({prof['samples']:,} samples, `{prof['file']}`)"
                             f": self time in {top}; recsvc frames (inclusive): {own}")
    lines += ["", "How: " + " ".join(result["how"]), ""]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import feast

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "grpcio": grpc.__version__, "feast": feast.__version__,
            "platform": platform.platform()}


HOW = [
    "Each generator process owns one grpc.aio channel and sends pre-serialised requests through "
    "`channel.unary_unary(method)` with bytes in and out, so every row, the echo's included, "
    "costs the client the same.",
    "Open loop: a pacing thread sleeps (time.sleep, clock_nanosleep) to each intended send time "
    "and hands the call to the event loop with call_soon_threadsafe; the processes' sends "
    "interleave; latency counts from the intended time, so the generator's own lateness is "
    "inside the numbers and shown as sched lag.",
    "Saturated: closed loop, c callers in all split across the processes.",
    "The echo server's payload is the hint request's bytes; it runs as its own process on the "
    "same kind of TCP address as `recsvc serve`.",
    "Every service row is probed with a few calls, one at a time, first: UNIMPLEMENTED rows are "
    "reported, not run; a degraded answer is flagged in notes, with the single-call latency.",
    "Server CPU per answer: user + system CPU of the server's process tree (from /proc) over "
    "the row, warm-up included, divided by the answers it gave.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=None, help="default 20000 (quick 3000)")
    parser.add_argument("--days", type=int, default=None, help="default 400 (quick 300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the data here (reusing its tables, features and promoted "
                             "models if any); default: a temporary directory, removed after")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--no-redis", action="store_true", help="SQLite only")
    parser.add_argument("--no-cluster", action="store_true",
                        help="no Redis Cluster row (by default one is started on free ports: "
                             "three masters, three replicas)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per row (default 15, quick 3)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="warm-up seconds per row (default 3, quick 1)")
    parser.add_argument("--event-loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="the event loop `recsvc serve` runs on (RECSVC_EVENT_LOOP)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (`recsvc serve --workers`; the echo server too)")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, default=50, help="callers when saturated")
    parser.add_argument("--sdk-reads", type=int, default=None,
                        help="timed Feast SDK reads per cell (default 1000, quick 200)")
    parser.add_argument("--profile", action="store_true",
                        help="then run the service's rows again under py-spy")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about three "
                        "minutes (half without the data build, with --data-dir): 3,000 members, "
                        "1 s warm-up, 3 s per row")
    parser.add_argument("--rows", default="",
                        help="only these rows and floors, comma-separated (e.g. "
                        "echo,score,hint_500,hint_saturated); skips the Feast SDK reference")
    parser.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    args = parser.parse_args()
    args.out = choose_out(parser, args)  # before any default is filled in
    exit_on_sigterm()  # the servers and the Redis Cluster it starts are stopped on a kill too
    only = {r.strip() for r in args.rows.split(",") if r.strip()}
    q = args.quick
    args.members = args.members or (3_000 if q else 20_000)
    args.days = args.days or (300 if q else 400)
    args.duration = args.duration or (3.0 if q else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if q else 3.0)
    args.sdk_reads = args.sdk_reads or (200 if q else 1_000)
    if args.profile and py_spy() is None:
        parser.error(f"--profile needs py-spy in {BIN}: it is in requirements.lock, so "
                     "`make install` installs it")
    if args.workers > 1:
        usage = subprocess.run([str(RECSVC), "serve", "--help"], capture_output=True,
                               text=True, check=False).stdout
        if "--workers" not in usage:
            parser.error("this recsvc serve has no --workers option")

    tmp = None if args.data_dir else Path(tempfile.mkdtemp(prefix="recsvc-bench-serving-"))
    data_dir = Path(args.data_dir or tmp).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / f"recsvc-bench-serving-{os.getpid()}.log"
    redis_project = f"recsvc_bench_serving_{uuid.uuid4().hex[:8]}"
    timing = Timing(warmup=args.warmup, duration=args.duration, clients=args.clients)
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "params": {"members": args.members, "days": args.days, "seed": args.seed,
                   "workers": args.workers, "event_loop": args.event_loop,
                   "clients": args.clients,
                   "concurrency": args.concurrency, "warmup": args.warmup,
                   "duration": args.duration, "deadline_s": timing.deadline},
        "rows": {}, "sdk": {}, "goals": {}, "how": HOW,
    }
    redis_client = None
    print(f"data: {data_dir}; server logs: {log}")
    ctx = multiprocessing.get_context("spawn")
    cluster = contextlib.ExitStack()
    cluster_home = Path(tempfile.mkdtemp(prefix="recsvc-bench-cluster-"))
    cluster_url = None
    try:
        if not args.no_redis and not args.no_cluster:
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import cluster_feature_repo, redis_cluster  # the tests' own starter

            nodes = cluster.enter_context(redis_cluster(cluster_home))
            cluster_url = f"redis://127.0.0.1:{next(iter(nodes))}"
        if not args.no_redis:
            import redis

            redis_client = redis.Redis.from_url(args.redis_url)
            try:
                redis_client.ping()
            except redis.RedisError as exc:
                raise SystemExit(f"Redis at {args.redis_url} does not answer ({exc}): start "
                                 "one (make test does) or pass --no-redis") from None
        result["params"]["models"] = prepare(args, data_dir, log)
        requests = build_requests(data_dir, args.seed, q)
        from recsvc.data import schema

        result["params"]["members"] = schema.read_table(data_dir, "members",
                                                        ["member_id"]).num_rows
        result["params"]["items"] = schema.read_table(data_dir, "items", ["item_id"]).num_rows
        stores: dict[str, dict[str, str]] = {
            "sqlite": service_env(data_dir, SQLITE_PROJECT, None)}
        if not args.no_redis:
            stores["redis"] = service_env(data_dir, redis_project, args.redis_url)
        if cluster_url is not None:
            stores["cluster"] = service_env(data_dir, redis_project, cluster_url,
                                            cluster_feature_repo(cluster_home))
        for env in stores.values():
            env["RECSVC_EVENT_LOOP"] = args.event_loop
        for store_name, env in stores.items():
            if store_name != "sqlite" and sh([str(RECSVC), "features"], env, log):
                raise RuntimeError(f"recsvc features ({store_name}) failed:\n" + tail(log))
        for store_name, env in stores.items() if not only else ():
            if store_name == "cluster":
                continue  # the SDK's read of a cluster: not measured
            print(f"Feast SDK reference, {store_name}:", flush=True)
            result["sdk"][store_name] = sdk_reference(
                data_dir, env["RECSVC_FEAST_PROJECT"], env.get("RECSVC_REDIS_URL"),
                args.sdk_reads, args.seed)
        with ctx.Pool(args.clients) as pool:
            pool.map(_ready, range(args.clients), chunksize=1)
            model = propensity_model(data_dir)
            for name, transport, scores in FLOORS:
                if only and name not in only:
                    continue
                if scores and model is None:
                    print(f"{name}: no production propensity model to score", flush=True)
                    continue
                address = f"127.0.0.1:{free_port()}"
                echo_cmd = [sys.executable, str(ECHO), "--address", address,
                            "--workers", str(args.workers), "--transport", transport,
                            *(["--score", str(model)] if scores else [])]
                with server(echo_cmd, service_env(data_dir, SQLITE_PROJECT, None), address,
                            log) as proc:
                    result["rows"][name], _ = measure_service(
                        pool, address, echo_scenarios(requests, args.concurrency,
                                                      slow_rates=name == "echo"),
                        timing, name, server_pid=proc.pid)
            for store_name, env in stores.items():
                address = f"127.0.0.1:{free_port()}"
                rows = [r for r in scenarios(requests, args.concurrency)
                        if not only or r.key in only]
                if not rows:
                    continue
                with server(serve_cmd(address, args.workers), env, address, log) as proc:
                    profile = (proc, args.out / "profiles") if args.profile else None
                    result["rows"][store_name], profiles = measure_service(
                        pool, address, rows, timing, store_name, profile, proc.pid)
                    if profiles:
                        result.setdefault("profiles", {})[store_name] = profiles
        result["goals"] = goals(result)
    finally:
        cluster.close()  # the cluster's nodes are killed: nothing of it to delete
        if redis_client is not None:
            from recsvc.adapters import online_write
            from recsvc.adapters.caps_redis import RedisCapStore

            gone = online_write.delete_project_keys(redis_client, redis_project)
            caps = RedisCapStore(redis_client, redis_project).delete_all()
            redis_client.close()
            print(f"redis: deleted {gone:,} keys and {caps:,} frequency-cap keys of "
                  f"{redis_project}")
        shutil.rmtree(cluster_home, ignore_errors=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    save_results(args.out, "serving", result, markdown)


if __name__ == "__main__":
    main()
