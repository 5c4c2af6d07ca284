"""`recsvc serve` as people run it: a subprocess on a free port, called through `recsvc client`,
with several workers, on the real Redis, and with a Redis that stops answering mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import on_cluster
from recsvc.data import schema
from recsvc.jobs.features import run_features
from recsvc.settings import Settings

RECSVC = [sys.executable, "-m", "recsvc.cli"]


@contextlib.contextmanager
def recsvc_serve(env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`recsvc serve` in a subprocess on a free port: yields its address once it is serving
    (and the process); killed afterwards if it is still running."""
    proc = subprocess.Popen([*RECSVC, "serve", "--address", "127.0.0.1:0", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        address = None
        assert proc.stdout is not None
        for line in proc.stdout:  # the server prints its address once it is serving
            seen.append(line)
            if "serving recsvc.v1.RedemptionService on " in line:
                address = line.split(" on ", 1)[1].split()[0]
                break
        assert address, "the server did not start:\n" + "".join(seen)
        yield address, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def client(env: dict[str, str], address: str, *args: str, ok: bool = True) -> Any:
    out = subprocess.run([*RECSVC, "client", "--address", address, *args], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    if not ok:
        assert out.returncode == 1, out.stdout + out.stderr
        return out.stdout
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def serve_env(ctx: Any, **extra: str) -> dict[str, str]:
    return {**os.environ, "RECSVC_DATA_DIR": str(ctx.settings.data_dir),
            "RECSVC_FEAST_PROJECT": ctx.settings.feast_project, **extra}


def _ids(ctx: Any, table: str, column: str) -> list[int]:
    return [int(i) for i in schema.read_table(ctx.settings.data_dir, table,
                                              [column])[column].to_numpy()[:20]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric(port: int, name: str, labels: dict[str, str]) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_recsvc_serve_answers_every_rpc_through_the_client_and_drains_on_sigterm(
        trained: Any) -> None:
    env = serve_env(trained)
    member, item = _ids(trained, "members", "member_id")[0], _ids(trained, "items", "item_id")[0]
    metrics = _free_port()
    with recsvc_serve(env, "--metrics-port", str(metrics)) as (address, proc):
        one = client(env, address, "churn", str(member))
        assert one["risk"]["memberId"] == str(member)
        assert one["modelVersion"] == trained.registry.production("churn")
        assert len(client(env, address, "churn", str(member), "2")["risks"]) == 2
        hint = client(env, address, "hint", str(member), str(item), "--balance", "640")
        assert hint["hint"]["itemId"] == str(item) and "pointsBetter" in hint["hint"]
        assert len(client(env, address, "hint", str(member), str(item), str(item))["hints"]) == 2
        rec = client(env, address, "recommend", str(member), "--limit", "3")
        assert [o["rank"] for o in rec["options"]] == [1, 2, 3]
        split = client(env, address, "cart", str(member), "1:25000:2", "2:990:1:cash",
                       "--balance", "1234")
        assert int(split["pointsValueMinor"]) + int(split["cashMinor"]) == 50_990
        assert split["lines"][1]["points"] == "0"
        bad = client(env, address, "recommend", str(member), "--category", "no-such",
                     ok=False)  # the client checks --limit itself; the server, categories
        assert "INVALID_ARGUMENT" in bad and "no category 'no-such'; one of" in bad
        # 50 points are a low balance; a preview counts nothing, the second reminder is capped
        nudges = ("nudges", str(member), "--balance", "50", "--channel", "sms")
        for args in ((*nudges, "--dry-run"), nudges):
            got = client(env, address, *args)
            assert "NUDGE_KIND_LOW_BALANCE" in [n["kind"] for n in got["nudges"]]
        again = client(env, address, *nudges)
        assert {"kind": "NUDGE_KIND_LOW_BALANCE", "cap": "low_balance_weekly"} in again["capped"]
        assert _metric(metrics, "recsvc_nudges_capped_total",
                       {"kind": "low_balance", "cap": "low_balance_weekly"}) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _workers(pid: int) -> list[int]:
    """The worker processes of a `recsvc serve` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
    return out


def test_workers_share_one_port_their_metrics_add_up_and_a_dead_one_is_replaced(
        trained: Any) -> None:
    env = serve_env(trained, RECSVC_COMPILED_MODELS="false")
    member = _ids(trained, "members", "member_id")[0]
    metrics = _free_port()
    with recsvc_serve(env, "--workers", "2", "--metrics-port", str(metrics)) as (address, proc):
        workers = _workers(proc.pid)
        assert len(workers) == 2
        for _ in range(6):  # a new connection each time: the kernel spreads them
            client(env, address, "churn", str(member))
        assert _metric(metrics, "recsvc_requests_total",
                       {"rpc": "GetChurnRisk", "code": "OK"}) == 6
        assert _metric(metrics, "recsvc_model_info", {
            "model": "churn", "version": trained.registry.production("churn")}) == 1
        os.kill(workers[0], signal.SIGKILL)  # a worker dies: another takes its place
        for _ in range(4):  # calls keep being answered (the survivor takes them meanwhile)
            client(env, address, "churn", str(member))
        assert proc.stdout is not None
        for line in proc.stdout:  # until the supervisor says the new worker serves
            if line.startswith("recsvc: worker ") and line.rstrip().endswith(" serving"):
                break
        now = _workers(proc.pid)
        assert len(now) == 2 and workers[0] not in now and workers[1] in now
        assert _metric(metrics, "recsvc_requests_total",
                       {"rpc": "GetChurnRisk", "code": "OK"}) == 10  # nothing lost
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code == 0, proc.stdout.read() if proc.stdout else code


def _redis_env(ctx: Any, url: str, project: str) -> dict[str, str]:
    settings = Settings(data_dir=ctx.settings.data_dir, feast_project=project, redis_url=url)
    run_features(settings, ctx.programme, say=lambda _: None)  # the same snapshots, into Redis
    return serve_env(ctx, RECSVC_REDIS_URL=url, RECSVC_FEAST_PROJECT=project,
                     RECSVC_COMPILED_MODELS="false")


@pytest.mark.redis
def test_serves_from_the_real_redis_what_it_serves_from_sqlite(
        trained: Any, redis_url: str, redis_project: str) -> None:
    env = _redis_env(trained, redis_url, redis_project)
    member = _ids(trained, "members", "member_id")[1]
    items = [str(i) for i in _ids(trained, "items", "item_id")[:3]]
    answers = []
    for e in (env, serve_env(trained, RECSVC_COMPILED_MODELS="false")):
        with recsvc_serve(e, "--metrics-port", "0") as (address, _):
            answers.append([client(e, address, "churn", str(member)),
                            client(e, address, "hint", str(member), *items),
                            client(e, address, "recommend", str(member), "--limit", "5"),
                            client(e, address, "cart", str(member), "1:30000")])
    redis_answers, sqlite_answers = answers
    assert redis_answers == sqlite_answers
    assert not any(a.get("degraded") for a in redis_answers)


def test_on_uvloop_it_answers_as_on_asyncio(trained: Any) -> None:
    member = _ids(trained, "members", "member_id")[2]
    items = [str(i) for i in _ids(trained, "items", "item_id")[:3]]
    answers = []
    for loop in ("uvloop", "asyncio"):
        env = serve_env(trained, RECSVC_EVENT_LOOP=loop)
        with recsvc_serve(env, "--metrics-port", "0") as (address, proc):
            answers.append([client(env, address, "hint", str(member), *items),
                            client(env, address, "recommend", str(member), "--limit", "5"),
                            client(env, address, "churn", str(member))])
            proc.send_signal(signal.SIGTERM)  # drains on either loop
            assert proc.wait(timeout=30) == 0
            assert proc.stdout is not None
            said = proc.stdout.read()  # what it printed after its address
            assert f"event loop: {loop}" in said, said
    assert answers[0] == answers[1] and not any(a.get("degraded") for a in answers[0])


@pytest.mark.redis
def test_two_replicas_on_a_redis_cluster_answer_as_sqlite_does_and_share_the_caps(
        trained: Any, redis_cluster_url: str, tmp_path: Path) -> None:
    """Two independent `recsvc serve` processes on one real Redis Cluster (features and
    caps): each answers what the embedded store answers, and a reminder one of them granted
    is capped on the other (the caps are the cluster's, not a process's)."""
    member = _ids(trained, "members", "member_id")[2]
    items = [str(i) for i in _ids(trained, "items", "item_id")[:3]]
    calls = [("churn", str(member)), ("hint", str(member), *items),
             ("recommend", str(member), "--limit", "5"), ("cart", str(member), "1:30000")]
    sqlite_env = serve_env(trained, RECSVC_COMPILED_MODELS="false")
    with recsvc_serve(sqlite_env, "--metrics-port", "0") as (address, _):
        embedded = [client(sqlite_env, address, *call) for call in calls]
    project = f"recsvc_test_{uuid.uuid4().hex[:10]}"
    with on_cluster(trained.settings.data_dir, project, redis_cluster_url, tmp_path,
                    trained.programme) as settings:
        env = serve_env(trained, RECSVC_REDIS_URL=redis_cluster_url,
                        RECSVC_FEAST_PROJECT=project,
                        RECSVC_FEATURE_REPO=str(settings.feature_repo),
                        RECSVC_COMPILED_MODELS="false")
        with recsvc_serve(env, "--metrics-port", "0") as (first, _), \
                recsvc_serve(env, "--metrics-port", "0") as (second, _):
            for address in (first, second):
                assert [client(env, address, *call) for call in calls] == embedded
            nudges = ("nudges", str(member), "--balance", "50", "--channel", "sms")
            granted = client(env, first, *nudges)
            assert "NUDGE_KIND_LOW_BALANCE" in [n["kind"] for n in granted["nudges"]]
            again = client(env, second, *nudges)
            assert {"kind": "NUDGE_KIND_LOW_BALANCE", "cap": "low_balance_weekly"} in \
                again["capped"]
            assert "NUDGE_KIND_LOW_BALANCE" not in [n["kind"] for n in again["nudges"]]


def _masters(ports: Iterator[int] | list[int]) -> list[int]:
    """The ports among `ports` whose node is a master now."""
    import redis

    out = []
    for port in ports:
        node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            if node.execute_command("ROLE")[0] in (b"master", "master"):
                out.append(port)
        finally:
            node.close()
    return out


@pytest.mark.redis
def test_a_cluster_master_killed_under_load_fails_over_and_no_call_fails(
        trained: Any, private_redis_cluster: dict[int, subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    """A Redis Cluster master is killed while a server answers hints, each for a member it has
    not read yet (a cluster is read uncached: every call asks the store). Until its replica is
    elected (the cluster's node timeout is 2 s) no call fails: they degrade (the store's
    reason given, the member a cold start), and once the replica serves every call is whole
    again, with no restart."""
    import grpc

    from recsvc.v1 import recsvc_pb2 as pb
    from recsvc.v1 import recsvc_pb2_grpc

    nodes = private_redis_cluster
    first = next(iter(nodes))  # the URL's node: the clean-up reaches the cluster through it
    url = f"redis://127.0.0.1:{first}"
    members = [int(i) for i in schema.read_table(trained.settings.data_dir, "members",
                                                 ["member_id"])["member_id"].to_numpy()]
    item = _ids(trained, "items", "item_id")[0]
    project = f"recsvc_test_{uuid.uuid4().hex[:10]}"
    with on_cluster(trained.settings.data_dir, project, url, tmp_path,
                    trained.programme) as settings:
        env = serve_env(trained, RECSVC_REDIS_URL=url, RECSVC_FEAST_PROJECT=project,
                        RECSVC_FEATURE_REPO=str(settings.feature_repo),
                        RECSVC_COMPILED_MODELS="false")
        victim = next(p for p in _masters(nodes) if p != first)
        calls: list[tuple[float, bool]] = []  # (seconds since the kill, degraded)
        failed: list[str] = []
        with recsvc_serve(env, "--metrics-port", "0") as (address, _), \
                grpc.insecure_channel(address) as channel:
            stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
            start = time.monotonic()
            killed: float | None = None
            for member in members:
                now = time.monotonic()
                if killed is None and now - start > 2:
                    nodes[victim].kill()
                    killed = now
                try:
                    got = stub.GetRedemptionHint(pb.GetRedemptionHintRequest(
                        member_id=member, item_id=item), timeout=10)
                except grpc.RpcError as err:
                    failed.append(f"member {member}: {err.code()} {err.details()}")
                    continue
                if got.degraded:
                    assert list(got.degraded_reasons) == [
                        pb.DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE]
                    assert pb.REASON_CODE_COLD_START in got.hint.reasons
                calls.append((now - (killed if killed is not None else now + 1e-9),
                              got.degraded))
                recovered = killed is not None and any(d for _, d in calls) and \
                    len(calls) > 100 and not any(d for _, d in calls[-100:])
                if recovered or (killed is not None and now - killed > 60):
                    break
                time.sleep(0.005)
        survivors = [p for p in nodes if p != victim]
        deadline = time.monotonic() + 30  # the election is eventual: the nodes agree soon after
        while len(masters := _masters(survivors)) != 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        # the victim's replica took its slots
        assert len(masters) == 3, (f"masters {masters} of {survivors}; the calls "
                                   f"{'recovered' if recovered else 'did not recover'} "
                                   f"{time.monotonic() - (killed or 0):.0f} s after the kill")
    assert not failed, f"{len(failed)} calls failed, the first: {failed[:3]}"
    before = [d for t, d in calls if t < 0]
    after = [(t, d) for t, d in calls if t >= 0]
    degraded = [t for t, d in after if d]
    assert before and not any(before)
    assert degraded, "no call felt the lost master"
    assert len(after) > 100 and not any(d for _, d in after[-100:]), "never recovered"
    print(f"master killed under load: {len(calls)} calls ({len(before)} before), none failed; "
          f"{len(degraded)} of {len(after)} after it degraded, the last {degraded[-1]:.1f} s "
          "after the kill")


def test_a_redis_that_stops_answering_mid_run_degrades_answers_and_they_recover(
        trained: Any, private_redis: tuple[str, subprocess.Popen]) -> None:
    url, redis_proc = private_redis
    project = f"recsvc_test_{uuid.uuid4().hex[:10]}"
    env = _redis_env(trained, url, project)
    member, unread = _ids(trained, "members", "member_id")[2:4]
    item = str(_ids(trained, "items", "item_id")[0])
    with recsvc_serve(env, "--metrics-port", "0") as (address, proc):
        healthy = client(env, address, "hint", str(member), item)
        assert not healthy.get("degraded") and "COLD_START" not in str(healthy)

        os.kill(redis_proc.pid, signal.SIGSTOP)  # hung: connections open, nothing answers
        try:
            start = time.monotonic()
            # a member already read is answered from the client-side cache (a stopped Redis
            # takes no writes, so it is what Redis holds); one not yet read degrades
            cached = client(env, address, "hint", str(member), item)
            hung = client(env, address, "hint", str(unread), item)
            rec = client(env, address, "recommend", str(member))
            split = client(env, address, "cart", str(member), "1:30000", "--balance", "500")
            churn = client(env, address, "churn", str(member))
            assert time.monotonic() - start < 20  # four client processes, none waits on Redis
        finally:
            os.kill(redis_proc.pid, signal.SIGCONT)
        assert cached == healthy
        for answer in (hung, rec, split, churn):
            assert answer["degraded"] is True
            assert answer["degradedReasons"] == ["DEGRADED_REASON_FEATURE_STORE_UNAVAILABLE"]
        # still useful: item data from memory, the member as a cold start, the rules applied
        assert hung["hint"]["pointsPrice"] != "0" and "REASON_CODE_COLD_START" in \
            hung["hint"]["reasons"]
        assert rec["options"] and int(split["pointsUsed"]) == 500

        back = client(env, address, "hint", str(member), item)  # by itself, no restart
        assert back == healthy
        redis_proc.kill()  # gone: connections refused
        redis_proc.wait(timeout=10)
        gone = client(env, address, "churn", str(member))
        assert gone["degraded"] is True
        assert gone["risk"]["coldStart"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


# what the serving process must never load: training, plotting, the offline store, and recsvc's
# offline computation, batch jobs and reports (their folders say which they are); LightGBM
# itself imports scikit-learn's base classes and metrics, its estimators are out
OFFLINE_MODULES = ("matplotlib", "duckdb", "ibis", "sklearn.linear_model", "sklearn.ensemble",
                   "sklearn.pipeline", "sklearn.impute", "recsvc.offline.", "recsvc.jobs.",
                   "recsvc.reports.")
_LOADED_WHEN_SERVING = """
import asyncio, json, os, sys
from recsvc.transport.main import serve_worker

def announce(info):
    banned = tuple(sys.argv[1:])
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(banned))), flush=True)
    os._exit(0)  # what it loaded is all this test asks of it

sys.exit(asyncio.run(serve_worker("127.0.0.1:0", announce)))
"""


def test_the_serving_process_loads_only_serving_code(trained: Any) -> None:
    """A worker, once SERVING (models, catalogue and caps loaded), has imported nothing of
    training, plotting, the offline store or the reports."""
    done = subprocess.run([sys.executable, "-c", _LOADED_WHEN_SERVING, *OFFLINE_MODULES],
                          check=False, env=serve_env(trained, RECSVC_COMPILED_MODELS="false"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
