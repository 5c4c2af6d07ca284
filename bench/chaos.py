"""Faults under load: what callers see while a dependency or a worker fails, and how soon it ends.

    make chaos            # .venv/bin/python bench/chaos.py [--rate auto|N] [--workers 2]

Starts a private redis-server (on a free port, in a directory of its own, with an append-only
file, as a cap store needs; the shared Redis is never touched), fills
it with the default data's features (`make features && make train` first), serves them with
`recsvc serve --workers 2`, measures the hint saturation (closed loop, 50 callers) and then
holds `--rate` (default `auto`: half that saturation; or hints per second) open loop on
GetRedemptionHint, with GetChurnRisk at a tenth of that and RecommendRedemptions,
OptimizeCartSplit and GetNudges at a hundredth each (random members, 1 s deadlines, the
advised client config, each caller process's calls spread over four connections), while
each fault happens in turn, `--before`
seconds into a row and lasting `--fault` seconds:

- none: the baseline;
- redis_sigstop: Redis stopped (SIGSTOP: connections open, nothing answers), then resumed;
- redis_restart: Redis killed (SIGKILL) and started again from its append-only file;
- redis_restart_empty: Redis killed and started again with nothing (a replacement node), then
  `recsvc features` fills it; no GetNudges in this row, as its cap records went with the node;
- worker_sigkill: one serving worker killed (the supervisor starts another);
- model_swaps: two churn versions promoted in turn every 2 s (a second one is trained, not
  promoted, on the data to a month earlier, in a copy of the registry, when there is none);
- corrupt_artefact: a copy of the production churn version with its model file truncated is
  put in the registry and the production pointer moved to it, as a broken deploy tool or a
  half-finished copy would (`recsvc models promote` refuses it: checked first); at the end the
  pointer is moved back;
- cancel_storm: a second caller sends GetRedemptionHint at half the load's rate and cancels
  every call within 5 ms;
- supervisor_sigterm: a second replica (`recsvc serve --workers 2`, the same Redis) runs
  beside the first and the callers balance over both (`recsvc.transport.channel.BALANCED`);
  the first one's supervisor is SIGTERMed and drains;
- cap_file_locked: on the embedded store (`recsvc serve --workers 2` without Redis, the
  frequency caps in their SQLite file), another process holds the cap file's write lock.

Per row: calls sent, calls failed by status code, degraded answers, p99 during the fault,
recovery (the seconds from the fault's end to the last failed or degraded answer; 0: none
after it ended) and the caps: nudges granted, grants over a cap, grants the cap store has no
record of (each row nudges members of its own). Writes chaos.{md,json} to bench/results/ when
every option is at its default, else to a temporary folder, printed (benchutil; --out DIR writes
there); exits 1 when a call failed or a cap check found a grant over a cap or unrecorded.
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
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_serving import (  # noqa: E402
    RECSVC,
    build_requests,
    free_port,
    generate,
    nudge_requests,
    serve_cmd,
    server,
    service_env,
    sh,
    tail,
)
from benchutil import OUT_HELP, choose_out  # noqa: E402

PROJECT = "recsvc_chaos"
SERVICE = "recsvc.v1.RedemptionService"
FAULTS = ("none,redis_sigstop,redis_restart,redis_restart_empty,worker_sigkill,model_swaps,"
          "corrupt_artefact,cancel_storm,supervisor_sigterm,cap_file_locked")
# faults that last longer than --fault: the refill of an emptied Redis runs inside the fault;
# ten promotions two seconds apart
SWAP_EVERY_S = 2.0
LONGER = {"redis_restart_empty": 30.0, "model_swaps": 20.0}
# rows on the embedded store (the rest run on the private Redis)
EMBEDDED = {"cap_file_locked"}
# rows whose load carries no GetNudges (see the module docstring)
NO_NUDGES = {"redis_restart_empty"}
# the load's mix: calls per second of each RPC per hint per second
MIX = {"GetChurnRisk": 1 / 10, "RecommendRedemptions": 1 / 100, "OptimizeCartSplit": 1 / 100,
       "GetNudges": 1 / 100}
# each row's GetNudges ask for this many members of its own, so a member is asked again
NUDGED_PER_ROW = 300
STORM_SHARE = 0.25
HINT_CLIENTS = 2  # generator processes for the hints
POOL = HINT_CLIENTS + len(MIX) + 1  # and one per other RPC, one for a storm
STORM_CANCEL_WITHIN_S = 0.005
# each generator process's channels (connections): with --workers 2 on one port, the kernel
# gives each connection to one worker, and a few connections can all fall on one
CONNECTIONS = 4


# --------------------------------------------------------------------------------------------
# Redis, its own.
# --------------------------------------------------------------------------------------------
class PrivateRedis:
    """A redis-server on `port` keeping an append-only file in `directory`. Redis writes a
    command to the file before it answers it, so what it acknowledged survives the process
    being killed; the file is fsynced every second (`always` would hold every read behind
    each write's fsync: on this machine's disk, reads then timed out at 50 ms)."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "everysec",
             # no rewrite forked in the middle of a row
             "--auto-aof-rewrite-percentage", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.2)
        limit = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            if time.monotonic() > limit:
                raise RuntimeError(f"redis-server on {self.port} did not start")
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)


def workers(pid: int) -> list[int]:
    """The serving worker processes of a `recsvc serve` supervisor."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
    return out


# --------------------------------------------------------------------------------------------
# The faults.
# --------------------------------------------------------------------------------------------
@dataclass
class Served:
    """What a row runs against: the callers' target and the supervisor(s) behind it."""

    address: str
    pid: int
    balanced: bool = False


class Faults:
    """Each fault: (inject, end) callables, run at the row's `before` and `before + fault`."""

    def __init__(self, redis: PrivateRedis, env: dict[str, str], log: Path,
                 caps_file: Path) -> None:
        self.redis = redis
        self.env = env
        self.log = log
        self.caps_file = caps_file
        self.served = Served("", 0)
        self.versions: list[str] = []
        self.swaps = 0
        self.notes: dict[str, str] = {}

    def table(self) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
        return {
            "none": (lambda: None, lambda: None),
            "redis_sigstop": (lambda: self.redis.signal(signal.SIGSTOP),
                              lambda: self.redis.signal(signal.SIGCONT)),
            "redis_restart": (self._restart, lambda: None),
            "redis_restart_empty": (lambda: self._restart(empty=True), self._refilled),
            "worker_sigkill": (self._kill_worker, lambda: None),
            "model_swaps": (self._start_swaps, self._stop_swaps),
            "corrupt_artefact": (self._promote_corrupt, self._restore_pointer),
            "cancel_storm": (lambda: None, lambda: None),  # the storm is a caller: see run_row
            "supervisor_sigterm": (self._terminate, lambda: None),
            "cap_file_locked": (self._lock_caps, self._unlock_caps),
        }

    def _restart(self, empty: bool = False) -> None:
        self.redis.kill()
        if empty:  # a replacement node: nothing on it
            shutil.rmtree(self.redis.directory)
        self.redis.start()
        if empty:
            # what an operator runs next: the job notices the store lost its rows (its fill
            # mark)
            self._refill = threading.Thread(target=self._features, daemon=True)
            self._refill.start()

    def _features(self) -> None:
        # at the lowest CPU priority, as a batch job beside a serving process would run (in
        # production it runs on another machine): the callers' answers come first
        if sh(lowest_priority([str(RECSVC), "features"]), self.env, self.log):
            raise RuntimeError("recsvc features failed:\n" + tail(self.log))

    def _refilled(self) -> None:
        self._refill.join()

    def _kill_worker(self) -> None:
        found = workers(self.served.pid)
        if found:
            os.kill(found[0], signal.SIGKILL)

    def _registry(self) -> Any:
        from recsvc.adapters.registry import Registry

        return Registry(Path(self.env["RECSVC_MODEL_REGISTRY"]))

    def _start_swaps(self) -> None:
        """Promote the two churn versions in turn, every SWAP_EVERY_S, until the fault ends
        (the server looks for a new version every second, so each one is loaded)."""
        self._swapping = threading.Event()
        versions = list(self.versions)
        original = versions[-1]
        registry = self._registry()

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

    def _promote_corrupt(self) -> None:
        """A copy of production churn with its model file cut short; the registry refuses to
        promote it, so the pointer is written past it, as a broken tool would."""
        from recsvc.adapters.registry import (
            MANIFEST_FILE,
            MODEL_FILE,
            POINTER_FILE,
            ProductionPointer,
        )
        from recsvc.errors import ArtefactInvalid

        registry = self._registry()
        self._good = registry.production("churn")
        corrupt = f"v{int(registry.versions('churn')[-1][1:]) + 1:04d}"
        root = Path(self.env["RECSVC_MODEL_REGISTRY"]) / "churn"
        shutil.copytree(root / self._good, root / corrupt)
        manifest = json.loads((root / corrupt / MANIFEST_FILE).read_text())
        (root / corrupt / MANIFEST_FILE).write_text(json.dumps({**manifest,
                                                               "version": corrupt}))
        model = root / corrupt / MODEL_FILE
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
        try:
            registry.promote("churn", corrupt, force=True)
            raise RuntimeError("the registry promoted a corrupt artefact")
        except ArtefactInvalid as exc:
            self.notes["corrupt_artefact"] = f"`recsvc models promote` refused it: {exc}"
        registry.store.write_atomic(f"churn/{POINTER_FILE}", ProductionPointer(
            corrupt, (self._good,), dt.datetime.now(dt.UTC).isoformat(), "promote",
            True).to_json())

    def _restore_pointer(self) -> None:
        self._registry().promote("churn", self._good, force=True)

    def _terminate(self) -> None:
        os.kill(self.served.pid, signal.SIGTERM)

    def _lock_caps(self) -> None:
        """Another process takes the cap file's write lock and holds it until the end."""
        self._locker = subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3, sys\n"
             "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "c.execute('BEGIN EXCLUSIVE')\n"
             "print('locked', flush=True)\n"
             "sys.stdin.read()\n", str(self.caps_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._locker.stdout is not None
        if self._locker.stdout.readline().strip() != b"locked":
            raise RuntimeError(f"could not lock {self.caps_file}")

    def _unlock_caps(self) -> None:
        assert self._locker.stdin is not None
        self._locker.stdin.close()  # its stdin ends: it exits, and the lock goes with it
        self._locker.wait(timeout=10)


# a session of its own whose autogroup is niced, then the command niced within it
_LOWEST = ("import os, sys\n"
           "os.setsid()\n"
           "try:\n"
           "    with open('/proc/self/autogroup', 'w') as f:\n"
           "        f.write('19')\n"
           "except OSError:\n"
           "    pass  # no autogroups here: nice alone ranks it\n"
           "os.nice(19)\n"
           "os.execv(sys.argv[1], sys.argv[1:])\n")


def lowest_priority(cmd: list[str]) -> list[str]:
    """`cmd` run below everything else on the machine. `nice -n 19` alone is not that where
    the kernel groups processes by session (autogroup, on by default in most distributions):
    CPU is shared fairly between sessions first, and nice ranks a process only within its
    own. The server runs in a session of its own, so a job niced in the harness's session
    still took up to half a core from the serving workers (measured: 10-48 % of a core during
    the refill, while the workers were short of CPU). The job gets a session of its own whose
    autogroup is niced to 19 as well."""
    return [sys.executable, "-c", _LOWEST, *cmd]


def second_churn_version(env: dict[str, str], log: Path, as_of: str) -> list[str]:
    """[another churn version, production]: a second one is trained (on the data up to
    `as_of`, not promoted) when the registry has only one, so there are two models to swap."""
    from recsvc.adapters.registry import Registry

    registry = Registry(Path(env["RECSVC_MODEL_REGISTRY"]))
    if len(registry.versions("churn")) < 2 and sh(
            [str(RECSVC), "train", "--model", "churn", "--no-promote", "--as-of", as_of],
            env, log) not in (0, 3):
        raise SystemExit("training a second churn version failed:\n" + tail(log))
    production = registry.production("churn")
    others = [v for v in registry.versions("churn") if v != production]
    return [*others[-1:], str(production)]


# --------------------------------------------------------------------------------------------
# The load.
# --------------------------------------------------------------------------------------------
def requests(data_dir: Path, seed: int, rows: int) -> dict[str, Any]:
    """The serving bench's requests, single churn requests, and per row the GetNudges of a
    slice of the members of its own (so each row's cap check stands alone)."""
    from recsvc.data import schema
    from recsvc.v1 import recsvc_pb2 as pb

    members = schema.read_table(data_dir, "members", ["member_id"])["member_id"].to_pylist()
    rng = random.Random(seed)
    bench = build_requests(data_dir, seed, quick=False)
    return {
        "GetRedemptionHint": bench["hint"],
        "RecommendRedemptions": bench["recommend"],
        "OptimizeCartSplit": bench["cart"],
        "GetChurnRisk": [pb.GetChurnRiskRequest(member_id=rng.choice(members))
                         .SerializeToString() for _ in range(2000)],
        "nudges_by_row": [nudge_requests(members[k::rows][:NUDGED_PER_ROW], rng, 2000)
                          for k in range(rows)],
    }


def load_specs(served: Served, name: str, row: int, payloads: dict[str, Any], rate: float,
               start: float, total: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    base = {"address": served.address, "balanced": served.balanced, "start": start,
            "warmup": 0.0, "duration": total, "deadline": args.deadline, "concurrency": None,
            "advised": not args.no_retries, "connections": CONNECTIONS}
    specs = [{**base, "method": f"/{SERVICE}/GetRedemptionHint",
              "payloads": payloads["GetRedemptionHint"], "rate": rate, "clients": HINT_CLIENTS,
              "index": i, "response": "GetRedemptionHintResponse"} for i in range(HINT_CLIENTS)]
    for rpc, share in MIX.items():
        if rpc == "GetNudges" and name in NO_NUDGES:
            continue
        specs.append({**base, "method": f"/{SERVICE}/{rpc}", "rate": rate * share,
                      "clients": 1, "index": 0,
                      "payloads": payloads["nudges_by_row"][row] if rpc == "GetNudges"
                      else payloads[rpc],
                      "response": f"{rpc}Response",
                      "keep_replies": rpc == "GetNudges"})
    return specs


def run_row(pool: Any, served: Served, name: str, row: int, faults: Faults,
            payloads: dict[str, Any], rate: float, args: argparse.Namespace) -> dict[str, Any]:
    inject, end = faults.table()[name]
    fault_s = max(args.fault, LONGER.get(name, 0.0))
    start = time.monotonic() + 2.0
    total = args.before + fault_s + args.after
    specs = load_specs(served, name, row, payloads, rate, start, total, args)
    if name == "cancel_storm":
        specs.append({**specs[0], "start": start + args.before, "duration": fault_s,
                      "rate": rate * STORM_SHARE, "clients": 1, "index": 0,
                      "cancel_within": STORM_CANCEL_WITHIN_S, "storm": True})
    pending = pool.map_async(generate, specs, chunksize=1)
    time.sleep(max(0.0, start + args.before - time.monotonic()))
    fault_start = time.monotonic()
    inject()
    time.sleep(max(0.0, fault_start + fault_s - time.monotonic()))
    end()
    fault_end = time.monotonic()
    parts = pending.get()
    storm = [p for p, s in zip(parts, specs, strict=True) if s.get("storm")]
    load = [(p, s) for p, s in zip(parts, specs, strict=True) if not s.get("storm")]
    out = summarise(name, [p for p, _ in load], fault_start, fault_end)
    by_rpc: dict[str, Counter[str]] = {}
    for part, spec in load:
        rpc = by_rpc.setdefault(spec["method"].rsplit("/", 1)[1], Counter())
        rpc["calls"] += len(part["codes"])
        rpc["failed"] += sum(c != "OK" for c in part["codes"])
        rpc["degraded"] += int(part["degraded"].sum())
    out["by_rpc"] = {k: dict(v) for k, v in by_rpc.items()}
    if storm:
        codes = Counter(storm[0]["codes"])
        out["storm"] = {"sent": sum(codes.values()), "by_code": dict(codes)}
    nudges = [(p, s) for p, s in load if s.get("keep_replies")]
    out["caps"] = cap_check(nudges, faults, embedded=name in EMBEDDED) if nudges else None
    return out


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
        # when the failed calls were sent, in seconds from the fault's start
        "failed_sent_s": [round(float(t - fault_start), 2) for t in
                          np.percentile(intended[~ok], [0, 50, 100])] if (~ok).any() else [],
        "timeline": timeline(intended - fault_start, lat, ok, degraded),
    }


def timeline(sent: np.ndarray, lat_ms: np.ndarray, ok: np.ndarray, degraded: np.ndarray,
             step_s: float = 0.5) -> list[dict[str, float | None]]:
    """Per `step_s` of the row (by when calls were sent, from the fault's start): calls,
    failed, degraded and the answered calls' p99, so a reader sees when a fault hurt."""
    out = []
    for lo in np.arange(np.floor(sent.min() / step_s) * step_s, sent.max(), step_s):
        at = (sent >= lo) & (sent < lo + step_s)
        good = at & ok
        out.append({"from_s": round(float(lo), 2), "calls": int(at.sum()),
                    "failed": int((at & ~ok).sum()), "degraded": int((good & degraded).sum()),
                    "p99_ms": round(float(np.percentile(lat_ms[good], 99)), 2)
                    if good.any() else None})
    return out


# --------------------------------------------------------------------------------------------
# The caps: no grant over a cap, none the store has no record of.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Option:
    item_id: int


@dataclass(frozen=True)
class _Granted:
    kind: str
    options: tuple[_Option, ...]


def cap_check(nudges: list[tuple[dict[str, Any], dict[str, Any]]], faults: Faults,
              embedded: bool) -> dict[str, int]:
    """The nudges granted in a row's answers, counted per cap key (member, cap[, item])
    against the cap's most and against the records the cap store holds for that key. Every
    cap's window is longer than a row, so a row's grants all fall in one window."""
    from recsvc.config import load_programme
    from recsvc.core.nudges import reservation
    from recsvc.v1 import recsvc_pb2 as pb

    programme = load_programme(faults.env.get("RECSVC_PROGRAMME"))
    assert min(c.window_hours for c in programme.nudges.caps) * 3600 > 120
    granted: Counter[tuple[int, str, int | None]] = Counter()
    most: dict[str, int] = {}
    calls = 0
    for part, spec in nudges:
        for payload, reply in zip(part["payload"], part["replies"], strict=True):
            if reply is None:
                continue
            calls += 1
            request = pb.GetNudgesRequest.FromString(spec["payloads"][payload])
            channel = pb.Channel.Name(request.channel).removeprefix("CHANNEL_").lower()
            for nudge in pb.GetNudgesResponse.FromString(reply).nudges:
                kind = pb.NudgeKind.Name(nudge.kind).removeprefix("NUDGE_KIND_").lower()
                r = reservation(programme, _Granted(kind, tuple(
                    _Option(o.item_id) for o in nudge.options)), channel)
                for (cap_name, item), cap in r.counted():
                    granted[(request.member_id, cap_name, item)] += 1
                    most[cap_name] = cap.max
    recorded = _recorded(list(granted), faults, embedded)
    return {
        "answers": calls,
        "granted": sum(n for (_, _, item), n in granted.items() if item is None),
        "over_cap": sum(max(0, n - most[cap]) for (_, cap, _), n in granted.items()),
        "unrecorded": sum(max(0, n - recorded[k]) for k, n in granted.items()),
    }


def _recorded(keys: list[tuple[int, str, int | None]], faults: Faults, embedded: bool
              ) -> dict[tuple[int, str, int | None], int]:
    """The records the cap store holds per key, named as the store names them."""
    from recsvc.adapters.caps_redis import RedisCapStore
    from recsvc.adapters.caps_sqlite import SqliteCapStore

    if embedded:
        with contextlib.closing(sqlite3.connect(faults.caps_file)) as conn:
            return {k: conn.execute("SELECT COUNT(*) FROM cap_events WHERE key = ?",
                                    (SqliteCapStore._key(k[0], (k[1], k[2])),)).fetchone()[0]
                    for k in keys}
    store = RedisCapStore.from_url(f"redis://127.0.0.1:{faults.redis.port}/0", PROJECT, 5.0)
    try:
        return {k: int(store.client.zcard(store._key(k[0], (k[1], k[2])))) for k in keys}
    finally:
        store.close()


def _warm(_: int) -> None:
    """A generator process's imports, before anything is timed."""
    import grpc  # noqa: F401

    from recsvc.transport import channel  # noqa: F401
    from recsvc.v1 import recsvc_pb2  # noqa: F401

    time.sleep(0.5)  # long enough that every process of the pool takes one


def forget_caps(path: Path, nudges: list[bytes]) -> None:
    """Delete the cap records of the members `nudges` ask for from the SQLite cap file (the
    data directory's: earlier runs of this harness nudged the same members), so a row's grants
    are counted afresh."""
    from recsvc.v1 import recsvc_pb2 as pb

    members = {pb.GetNudgesRequest.FromString(n).member_id for n in nudges}
    if not path.exists():
        return
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany("DELETE FROM cap_events WHERE key LIKE ?",
                         [(f"{m}:%",) for m in sorted(members)])


def closed_loop(pool: Any, address: str, payloads: list[bytes], args: argparse.Namespace,
                warmup: float, duration: float) -> float:
    """Hints per second answered by 50 callers each waiting on its answer, after `warmup`
    (a new server's member cache fills meanwhile)."""
    spec = {"address": address, "start": time.monotonic() + 1.0, "warmup": warmup,
            "duration": duration, "deadline": args.deadline, "concurrency": 50, "rate": None,
            "payloads": payloads, "clients": 2, "advised": not args.no_retries,
            "method": f"/{SERVICE}/GetRedemptionHint", "connections": CONNECTIONS}
    parts = pool.map(generate, [{**spec, "index": i} for i in range(2)], chunksize=1)
    return sum(c == "OK" for p in parts for c in p["codes"]) / duration


# --------------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------------
def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, when: dt.datetime,
             saturated: float, rate: float, notes: dict[str, str]) -> str:
    mix = ", ".join(f"{rpc} at {rate * share:g}/s" for rpc, share in MIX.items())
    lines = [
        "# Faults under load: calls failed, degraded, p99, recovery and caps per fault", "",
        f"Command: `python bench/chaos.py --rate {args.rate} --workers {args.workers} "
        f"--before {args.before:g} --fault {args.fault:g} --after {args.after:g}"
        f"{' --no-retries' if args.no_retries else ''}` "
        f"(`make chaos`). Run {when:%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}.", "",
        f"Load: GetRedemptionHint at {rate:g}/s ({rate / saturated:.0%} of the "
        f"{saturated:,.0f}/s measured saturated, 50 callers, on this server just before), "
        f"with {mix}; open loop, random members, "
        f"deadline {args.deadline:g} s, "
        + ("without retries" if args.no_retries else "with the advised service config "
           "(`recsvc.transport.channel`: a call that ends UNAVAILABLE or RESOURCE_EXHAUSTED is "
           "retried up to three times, 50 to 450 ms apart, throttled)")
        + f"; `recsvc serve --workers {args.workers}` on a private Redis "
        "(append-only file, fsynced every second), or on the embedded store where the row "
        f"says so. Each row: {args.before:g} s before the fault, {args.fault:g} s of fault, "
        f"{args.after:g} s after. Recovery: seconds from the fault's end to the last failed "
        "or degraded answer. Caps: the nudges granted in the row's answers (each row nudges "
        "members of its own), how many of them a cap should have withheld (over cap) and how "
        "many the cap store holds no record of (unrecorded); both must be 0.", "",
        "| fault | lasted s | calls | failed | failed by code | degraded | "
        "p99 during the fault ms | p99 of the row ms | recovery s | nudges granted | "
        "over cap | unrecorded |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["failed_by_code"].items())) or "–"
        caps = r["caps"] or {}
        lines.append(f"| {r['fault']} | {r['fault_s']} | {r['calls']:,} | {r['failed']:,} | "
                     f"{codes} | {r['degraded']:,} | {r['p99_during_ms']} | "
                     f"{r['p99_all_ms']} | {r['recovery_s']} | {caps.get('granted', '–')} | "
                     f"{caps.get('over_cap', '–')} | {caps.get('unrecorded', '–')} |")
    lines += ["", "What each row does:", ""]
    lines += [f"- {line.strip()}" for line in ROW_NOTES]
    for r in rows:
        if r.get("storm"):
            lines.append(f"- cancel_storm's second caller sent {r['storm']['sent']:,} calls: "
                         + ", ".join(f"{k} {v:,}" for k, v in
                                     sorted(r["storm"]["by_code"].items())) + ".")
    lines += [f"- {name}: {text}" for name, text in notes.items()]
    return "\n".join(lines) + "\n"


ROW_NOTES = [
    "redis_restart: Redis is killed (SIGKILL) and started again at once from its append-only "
    "file; its features and cap records come back with it.",
    "redis_restart_empty lasts 30 s: Redis is killed and started again empty (a replacement "
    "node), and `recsvc features` (which finds the store's fill mark gone) fills it again "
    "inside the fault; meanwhile members read as unknown are answered as cold starts (not "
    "flagged degraded), from the catalogue the service kept. It carries no GetNudges: the "
    "node's cap records are gone with it, so a cap cannot be checked across it.",
    f"model_swaps lasts 20 s: the two churn versions promoted in turn every {SWAP_EVERY_S:g} s "
    "(the row's name says how many), the server looking for a new version every second, so "
    "each is loaded "
    "under load by both workers (from the compiled cache, warmed before the row as a "
    "deployment does before it promotes).",
    "corrupt_artefact: the production pointer moved to a copy of the production churn model "
    "cut in half; every worker refuses it (checksum) and goes on with the version it serves, "
    "then the pointer is moved back.",
    f"cancel_storm: a second caller sends GetRedemptionHint at {STORM_SHARE:g}× the load's "
    f"rate during the fault and cancels each call at a random moment within "
    f"{STORM_CANCEL_WITHIN_S * 1000:g} ms; its calls are not in the row's counts.",
    "supervisor_sigterm: two replicas of `recsvc serve` on the same Redis; the callers balance "
    "over both with the advised config for several replicas (round robin, each replica's "
    "health watched). The first supervisor is SIGTERMed: its health turns NOT_SERVING, the "
    "callers stop sending to it, it answers what it has and exits.",
    "cap_file_locked: on the embedded store (SQLite features and the SQLite cap file, in the "
    "data directory: the row's members' records from earlier runs are deleted first); "
    "another process holds the cap file's write lock (BEGIN EXCLUSIVE) for the fault, so "
    "GetNudges answers degraded (nudges withheld, none granted uncounted) until it is free.",
]


# --------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--rate", default="auto",
                        help="hints per second, or auto: half the saturation measured first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--fault", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=1.0)
    parser.add_argument("--faults", default=FAULTS)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--no-retries", action="store_true",
                        help="callers without the advised service config (recsvc.transport."
                             "channel: calls retried on UNAVAILABLE, RESOURCE_EXHAUSTED)")
    parser.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    args = parser.parse_args()
    args.out = choose_out(parser, args)  # before any default is filled in
    names = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(names) - set(FAULTS.split(","))
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    # the replicas' drain ends the Redis rows; the embedded store's rows come after them
    names.sort(key=lambda n: (n in EMBEDDED, n == "supervisor_sigterm"))
    data_dir = args.data_dir.resolve()
    log = Path(tempfile.gettempdir()) / f"recsvc-chaos-{os.getpid()}.log"
    work = Path(tempfile.mkdtemp(prefix="recsvc-chaos-"))
    port = free_port()
    env = service_env(data_dir, PROJECT, f"redis://127.0.0.1:{port}/0")
    # the models: a copy of the data's registry (promotions here leave the data's alone),
    # looked for every second, so each promotion is loaded while the load runs
    registry = work / "models"
    shutil.copytree(data_dir / "models", registry)
    env |= {"RECSVC_MODEL_REGISTRY": str(registry), "RECSVC_MODEL_REFRESH_SECONDS": "1"}
    # the embedded store: the data's own SQLite features (`make features`), its project
    embedded_env = {k: v for k, v in env.items()
                    if k not in ("RECSVC_REDIS_URL", "RECSVC_FEAST_PROJECT")}
    from recsvc.adapters.caps import SQLITE_FILE

    payloads = requests(data_dir, args.seed, len(names))
    rows: list[dict[str, Any]] = []
    print(f"chaos: server log {log}", flush=True)
    redis = PrivateRedis(port, work / "redis")
    redis.start()
    faults = Faults(redis, env, log, data_dir / SQLITE_FILE)
    ctx = multiprocessing.get_context("spawn")
    rate = saturated = 0.0
    try:
        # the private Redis filled, and the harness's Feast project applied, before anything reads
        # through it (the second churn version's training below does)
        if sh([str(RECSVC), "features"], env, log):
            raise SystemExit("recsvc features into the private Redis failed:\n" + tail(log))
        if "model_swaps" in names:
            from recsvc.offline.batch_scoring import features_as_of

            earlier = (features_as_of(data_dir) - dt.timedelta(days=30)).date().isoformat()
            faults.versions = second_churn_version(env, log, earlier)
            # both compiled into the cache first, as a deployment does before it promotes: a swap
            # row measures loading; the first compile of a version runs in a child process
            from recsvc.adapters.compile_cache import compile_in_child
            from recsvc.adapters.registry import MODEL_FILE

            for version in faults.versions:
                why = compile_in_child(registry / "churn" / version / MODEL_FILE, leaves=True)
                if why is not None:
                    raise SystemExit(f"compiling churn {version} failed: {why}")
            print(f"chaos: churn versions to swap: {faults.versions}", flush=True)
        with ctx.Pool(POOL) as pool, contextlib.ExitStack() as outer:
            pool.map(_warm, range(POOL), chunksize=1)
            phase, stack = None, outer
            for k, name in enumerate(names):
                wanted = "embedded" if name in EMBEDDED else "redis"
                if phase != wanted:  # the previous phase's servers stop first
                    stack.close()
                    stack = outer.enter_context(contextlib.ExitStack())
                    served = start_phase(stack, wanted, env if wanted == "redis"
                                         else embedded_env, log, args)
                    phase = wanted
                    if not rate:
                        saturated = closed_loop(pool, served.address,
                                                payloads["GetRedemptionHint"], args,
                                                warmup=5.0, duration=5.0)
                        rate = saturated / 2 if args.rate == "auto" else float(args.rate)
                        print(f"chaos: saturated {saturated:,.0f} hints/s; load {rate:,.0f}/s",
                              flush=True)
                if name in EMBEDDED:
                    forget_caps(faults.caps_file, payloads["nudges_by_row"][k])
                if name == "supervisor_sigterm":
                    served = stack.enter_context(second_replica(
                        served, env, log, pool, payloads["GetRedemptionHint"], args))
                faults.served = served
                row = run_row(pool, served, name, k, faults, payloads, rate, args)
                if name == "model_swaps":
                    row["fault"] = f"model_swaps ({faults.swaps} promotions)"
                rows.append(row)
                print(f"chaos: {name:20s} calls {row['calls']:6,}  failed {row['failed']:5,} "
                      f"{row['failed_by_code']}  degraded {row['degraded']:5,}  p99 during "
                      f"{row['p99_during_ms']} ms  recovery {row['recovery_s']} s  caps "
                      f"{row['caps']}\n        by RPC {row['by_rpc']}", flush=True)
                time.sleep(2.0)
    finally:
        redis.kill()
        shutil.rmtree(work, ignore_errors=True)
    when = dt.datetime.now(dt.UTC)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.md").write_text(
        markdown(rows, args, when, saturated, rate, faults.notes), encoding="utf-8")
    (args.out / "chaos.json").write_text(json.dumps({
        "run": when.isoformat(), "args": {k: str(v) for k, v in vars(args).items()},
        "saturated_hints_per_s": saturated, "rate": rate, "rows": rows,
        "notes": faults.notes}, indent=2) + "\n", encoding="utf-8")
    print(f"chaos: wrote {args.out / 'chaos.md'}")
    broken = [r["fault"] for r in rows if r["failed"] or (r["caps"] and (
        r["caps"]["over_cap"] or r["caps"]["unrecorded"]))]
    if broken:
        print(f"chaos: failed calls or caps broken in {broken}")
    return 1 if broken else 0


def start_phase(stack: contextlib.ExitStack, phase: str, env: dict[str, str], log: Path,
                args: argparse.Namespace) -> Served:
    """A `recsvc serve` for the phase's rows (the previous phase's is stopped first)."""
    address = f"127.0.0.1:{free_port()}"
    proc = stack.enter_context(server(serve_cmd(address, args.workers), env, address, log))
    print(f"chaos: serving the {phase} rows on {address}", flush=True)
    return Served(address, proc.pid)


@contextlib.contextmanager
def second_replica(first: Served, env: dict[str, str], log: Path, pool: Any,
                   payloads: list[bytes], args: argparse.Namespace) -> Any:
    """Another replica beside `first`; the callers' target names both."""
    address = f"127.0.0.1:{free_port()}"
    with server(serve_cmd(address, args.workers), env, address, log):
        # warmed as the first one is (its member cache filled) before it takes a share
        closed_loop(pool, address, payloads, args, warmup=5.0, duration=1.0)
        yield Served(f"ipv4:{first.address},{address}", first.pid, balanced=True)


if __name__ == "__main__":
    sys.exit(main())
