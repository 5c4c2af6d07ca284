"""Shared fixtures: a tiny hand-built canonical table set, and a real Redis for online tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# as `recsvc` does (cli.main): LightGBM's spinning OpenMP threads crawl when CI shares the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from recsvc.data import schema

REDIS_URL_ENV = "RECSVC_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def at(text: str) -> dt.datetime:
    """An ISO instant in UTC: at("2025-02-15 12:00")."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def bad_request_field(err: Any) -> str:
    """The field a gRPC INVALID_ARGUMENT error names in its google.rpc.BadRequest detail."""
    status = rpc_status.from_call(err)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return str(bad.field_violations[0].field)


# --------------------------------------------------------------------------------------------
# The tiny table set. Every number the feature tests expect is worked out by hand from this.
#
# member 1  signed up 2024-12-01, age 25-34. Two opening lots on 2025-01-01 (300 points
#           lapsing 2025-03-01, 80 lapsing 2025-03-15); orders on 01-05 (100.00, earns 100),
#           02-10 (200.00, earns 200) and 03-01 (50.00, earns 50); redeems item 10 on 02-15
#           12:00 for 350 points, which FIFO-by-expiry takes as 300 + 50 from the two lots, so
#           30 points of the second lot lapse on 03-15.
# member 2  signed up 2025-01-10, no age band, never orders or earns.
# member 3  signed up 2025-01-15, orders 6,000.00 on 01-20 (gold from then on) and 10.00 on
#           03-05 10:00 (the event the point-in-time test looks at).
# item 10   created 2024-06-01, stock 5 until the redemption on 02-15, then 4; 20 % off on the
#           days 02-01..02-07. item 11 created 2025-01-15.
# The last event is an exposure on 2025-03-20, so the default as-of is 2025-03-21 00:00.
# --------------------------------------------------------------------------------------------
MEMBERS = [
    # member_id, signup_at, age_band
    (1, "2024-12-01 09:00", "25-34"),
    (2, "2025-01-10 08:00", None),
    (3, "2025-01-15 18:00", "35-44"),
]
ITEMS = [
    # item_id, category, points_class, market_price_minor, points_price, perceived, created
    (10, "home", "base", 8_000, 800, 0.85, "2024-06-01 00:00"),
    (11, "books", "growth", 3_000, 500, 0.9, "2025-01-15 10:00"),
]
ORDERS = [
    # order_id, member_id, ts, amount_minor, points_earned
    (1, 1, "2025-01-05 10:00", 10_000, 100),
    (2, 1, "2025-02-10 10:00", 20_000, 200),
    (3, 1, "2025-03-01 09:00", 5_000, 50),
    (4, 3, "2025-01-20 10:00", 600_000, 6_000),
    (5, 3, "2025-03-05 10:00", 1_000, 12),
]
LEDGER = [
    # entry_id, member_id, ts, kind, points, expires_at, ref_id
    (1, 1, "2025-01-01 00:00", "opening", 300, "2025-03-01 00:00", None),
    (2, 1, "2025-01-01 00:00", "opening", 80, "2025-03-15 00:00", None),
    (3, 1, "2025-01-05 10:00", "earn", 100, "2026-02-01 00:00", 1),
    (4, 1, "2025-02-10 10:00", "earn", 200, "2026-03-01 00:00", 2),
    (5, 1, "2025-02-15 12:00", "burn", -350, None, 1),
    (6, 1, "2025-03-01 09:00", "earn", 50, "2026-04-01 00:00", 3),
    (7, 1, "2025-03-15 00:00", "expire", -30, None, None),
    (8, 3, "2025-01-20 10:00", "earn", 6_000, "2026-02-01 00:00", 4),
    (9, 3, "2025-03-05 10:00", "earn", 12, "2026-04-01 00:00", 5),
]
EXPOSURES = [
    # exposure_id, member_id, item_id, ts, redeemed, redemption_id, surface
    (1, 2, 10, "2025-01-10 14:00", False, None, "product_page"),
    (2, 3, 11, "2025-01-21 13:00", False, None, "cart"),
    (3, 1, 10, "2025-02-15 11:00", True, 1, "points_centre"),
    (4, 2, 10, "2025-02-20 14:00", False, None, "points_centre"),
    (5, 1, 11, "2025-03-20 15:00", False, None, "product_page"),
]
REDEMPTIONS = [
    # redemption_id, member_id, item_id, exposure_id, ts, points, cash_minor
    (1, 1, 10, 3, "2025-02-15 12:00", 350, 450),
]
TINY_AS_OF = at("2025-03-21 00:00")


def _item_days() -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {k: [] for k in schema.ITEM_DAYS.names}
    for item_id, first in ((10, dt.date(2025, 1, 1)), (11, dt.date(2025, 1, 15))):
        day = first
        while day <= dt.date(2025, 3, 20):
            end = at(f"{day} 00:00") + dt.timedelta(days=1)
            promo = item_id == 10 and dt.date(2025, 2, 1) <= day <= dt.date(2025, 2, 7)
            sold = item_id == 10 and day >= dt.date(2025, 2, 15)
            rows["item_id"].append(item_id)
            rows["ts"].append(end)
            rows["discount_coefficient"].append(0.8 if promo else 1.0)
            rows["stock"].append(4 if sold else 5)
            rows["replenished"].append(0)
            day += dt.timedelta(days=1)
    return rows


def write_tiny_tables(data_dir: Path) -> Path:
    """Write the tiny table set under data_dir/tables (atomically, as every writer does)."""
    def opt(text: str | None) -> dt.datetime | None:
        return at(text) if text else None

    with schema.atomic_tables(schema.tables_dir(data_dir)) as out:
        out.write("members", {
            "member_id": [m[0] for m in MEMBERS], "external_id": [None] * len(MEMBERS),
            "signup_at": [at(m[1]) for m in MEMBERS], "age_band": [m[2] for m in MEMBERS],
            "source": ["simulated"] * len(MEMBERS)})
        out.write("items", {
            "item_id": [i[0] for i in ITEMS], "name": [f"item {i[0]}" for i in ITEMS],
            "category": [i[1] for i in ITEMS], "points_class": [i[2] for i in ITEMS],
            "market_price_minor": [i[3] for i in ITEMS], "points_price": [i[4] for i in ITEMS],
            "perceived_discount": [i[5] for i in ITEMS], "created_at": [at(i[6]) for i in ITEMS]})
        out.write("item_days", _item_days())
        out.write("orders", {
            "order_id": [o[0] for o in ORDERS], "member_id": [o[1] for o in ORDERS],
            "ts": [at(o[2]) for o in ORDERS], "amount_minor": [o[3] for o in ORDERS],
            "quantity": [1] * len(ORDERS), "category": ["home"] * len(ORDERS),
            "points_earned": [o[4] for o in ORDERS]})
        out.write("ledger", {
            "entry_id": [e[0] for e in LEDGER], "member_id": [e[1] for e in LEDGER],
            "ts": [at(e[2]) for e in LEDGER], "kind": [e[3] for e in LEDGER],
            "points": [e[4] for e in LEDGER], "expires_at": [opt(e[5]) for e in LEDGER],
            "ref_id": [e[6] for e in LEDGER]})
        out.write("exposures", {
            "exposure_id": [x[0] for x in EXPOSURES], "member_id": [x[1] for x in EXPOSURES],
            "item_id": [x[2] for x in EXPOSURES], "ts": [at(x[3]) for x in EXPOSURES],
            "surface": [x[6] for x in EXPOSURES], "balance": [0] * len(EXPOSURES),
            "redeemed": [x[4] for x in EXPOSURES], "redemption_id": [x[5] for x in EXPOSURES]})
        out.write("redemptions", {
            "redemption_id": [r[0] for r in REDEMPTIONS],
            "member_id": [r[1] for r in REDEMPTIONS], "item_id": [r[2] for r in REDEMPTIONS],
            "exposure_id": [r[3] for r in REDEMPTIONS], "ts": [at(r[4]) for r in REDEMPTIONS],
            "points": [r[5] for r in REDEMPTIONS], "cash_minor": [r[6] for r in REDEMPTIONS]})
    return data_dir


@pytest.fixture(scope="session")
def tiny_tables_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding only the tiny tables; copy it before writing anything else."""
    return write_tiny_tables(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_data_dir(tiny_tables_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny table set."""
    target = tmp_path / "data"
    shutil.copytree(tiny_tables_dir, target)
    return target


# --------------------------------------------------------------------------------------------
# Redis: the real server at RECSVC_TEST_REDIS_URL, started here when it does not answer.
# --------------------------------------------------------------------------------------------
def _ping(url: str, timeout_s: float = 0.5) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                      socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis that answers. Never flushed or stopped here: it may be shared.

    When nothing answers on a local address, a server is started for the session
    (`redis-server --daemonize yes --save ""`) and left running for the next one.
    """
    url = os.environ.get(REDIS_URL_ENV, DEFAULT_TEST_REDIS_URL)
    if _ping(url):
        return url
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.fail(f"{REDIS_URL_ENV}={url}: Redis does not answer, and it is not local")
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail(f"{url}: Redis does not answer and redis-server is not installed")
    subprocess.run([server, "--daemonize", "yes", "--port", str(parts.port or 6379),
                    "--bind", parts.hostname, "--save", ""],
                   check=True, capture_output=True, timeout=10)
    deadline = time.monotonic() + 10
    while not _ping(url):  # a daemonised server needs a moment to accept connections
        if time.monotonic() > deadline:
            pytest.fail(f"{url}: started redis-server, but it does not answer")
        time.sleep(0.05)
    return url


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server of the test's own on a free port, to stop and kill (the shared one on
    6379 is never touched)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _ping(url, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on port {port} did not start")
            time.sleep(0.02)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)


def _free_cluster_ports(n: int) -> list[int]:
    """`n` ports free on 127.0.0.1 whose cluster bus ports (port + 10000) are free too, both
    below the kernel's ephemeral range: a port the kernel hands out (bind to 0) is released
    before redis-server binds it, and meanwhile any outgoing connection (a test under load
    makes many) may be given it or its bus port, so the node would fail to start."""
    low_ephemeral = 32768
    with contextlib.suppress(OSError, ValueError):
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(1024, low_ephemeral - 10000))
    random.SystemRandom().shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        if len(ports) == n:
            return ports
        with socket.socket() as sock, socket.socket() as bus:
            try:
                sock.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    if len(ports) == n:
        return ports
    raise RuntimeError(f"no {n} free port pairs below the ephemeral range ({low_ephemeral})")


@contextlib.contextmanager
def redis_cluster(home: Path) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    """A real Redis Cluster: three masters with one replica each, from the Debian redis-server
    on free ports (a node that stops answering for 2 s is failed over), joined by `redis-cli
    --cluster create`; killed on exit. Yields the nodes' processes by port."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.fail("redis-server and redis-cli are needed for the Redis Cluster tests")
    ports = _free_cluster_ports(6)
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for port in ports:
            node = home / str(port)
            node.mkdir()
            procs[port] = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                 "--save", "", "--appendonly", "no", "--dir", str(node),
                 # a replica's first sync at once, not after the default 5 s wait for others
                 "--repl-diskless-sync-delay", "0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        for port, proc in procs.items():
            while not _ping(f"redis://127.0.0.1:{port}", 0.2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server (cluster node) on port {port} did not start")
                time.sleep(0.05)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        _wait_cluster_ok(ports, deadline=time.monotonic() + 30)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def small_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 simulated members over 200 days with their features (every view, nulls and strings
    among them): the data the writer and engine tests materialise."""
    from recsvc.config import load_programme
    from recsvc.jobs.features import run_features
    from recsvc.settings import Settings

    data = tmp_path_factory.mktemp("small") / "data"
    repo = Path(__file__).resolve().parent.parent / "feature_repo"
    run_features(Settings(data_dir=data, feature_repo=repo, feast_project="small_sqlite"),
                 load_programme(), members=300, days=200, seed=11, say=lambda _: None)
    return data


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis Cluster (`redis_cluster`). The URL names one node; clients discover
    the rest."""
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as nodes:
        yield f"redis://127.0.0.1:{next(iter(nodes))}"


@pytest.fixture
def private_redis_cluster(tmp_path: Path) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    """A Redis Cluster of the test's own (`redis_cluster`), to kill nodes of."""
    home = tmp_path / "redis-cluster"
    home.mkdir()
    with redis_cluster(home) as nodes:
        yield nodes


def _wait_cluster_ok(ports: list[int], deadline: float) -> None:
    """Until every node says cluster_state:ok (slots assigned, nodes agreed) and every replica
    has its master's data (link up, no sync in progress): a replica still waiting for its
    first sync is too stale to be elected, so a master killed before then is never failed
    over."""
    import redis

    def ready(client: Any) -> bool:
        if client.cluster("info").get("cluster_state") != "ok":
            return False
        info = client.info("replication")
        return info.get("role") != "slave" or (
            info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"))

    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            while not ready(client):
                if time.monotonic() > deadline:
                    pytest.fail(f"Redis Cluster node {port} never reported cluster_state:ok "
                                "with its replication in sync")
                time.sleep(0.1)
        finally:
            client.close()


def cluster_feature_repo(tmp: Path) -> Path:
    """The project's feature repository configured as a production one on Redis Cluster is
    (`redis_type: redis_cluster`; the address comes from the settings), under `tmp`."""
    import yaml

    repo = tmp / "feature_repo_cluster"
    shutil.copytree(Path(__file__).resolve().parent.parent / "feature_repo", repo)
    config = yaml.safe_load((repo / "feature_store.yaml").read_text(encoding="utf-8"))
    config["online_store"] = {"type": "redis", "redis_type": "redis_cluster"}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return repo


@contextlib.contextmanager
def on_cluster(data_dir: Path, project: str, url: str, tmp: Path,
               programme: Any) -> Iterator[Any]:
    """Settings of `project` on the Redis Cluster a node of which is at `url`, through
    `cluster_feature_repo`, with `data_dir`'s snapshots materialised into it; the project's
    feature and cap keys deleted afterwards."""
    from redis.cluster import RedisCluster

    from recsvc.adapters.caps_redis import RedisCapStore
    from recsvc.adapters.online_write import delete_project_keys
    from recsvc.jobs.features import run_features
    from recsvc.settings import Settings

    repo = cluster_feature_repo(tmp)
    settings = Settings(data_dir=data_dir, feast_project=project, redis_url=url,
                        feature_repo=repo)
    try:
        run_features(settings, programme, say=lambda _: None)
        yield settings
    finally:
        client = RedisCluster.from_url(url)
        try:
            delete_project_keys(client, project)
            RedisCapStore(client, project).delete_all()
        finally:
            client.close()


@pytest.fixture
def redis_project(redis_url: str) -> Iterator[str]:
    """A Feast project name of the test's own; its Redis keys are deleted afterwards."""
    import redis

    from recsvc.adapters.online_write import delete_project_keys

    project = f"recsvc_test_{uuid.uuid4().hex[:10]}"
    yield project
    client = redis.Redis.from_url(redis_url)
    try:
        delete_project_keys(client, project)
    finally:
        client.close()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 6,000-member, 480-day programme with features, both models trained and promoted
    (shared by the model and serving tests: training takes half a minute)."""
    from recsvc.adapters.context import open_context
    from recsvc.config import load_programme
    from recsvc.jobs.features import run_features
    from recsvc.jobs.models import train_and_promote
    from recsvc.settings import Settings

    data = tmp_path_factory.mktemp("models") / "data"
    settings = Settings(data_dir=data, feast_project=f"models_{uuid.uuid4().hex[:8]}")
    run_features(settings, load_programme(), members=6000, days=480, seed=3, say=lambda _: None)
    ctx = open_context(settings)
    ctx.outcome = train_and_promote(  # type: ignore[attr-defined]
        ctx, ("churn", "propensity"), as_of=None, horizon_days=90, say=lambda _: None)
    return ctx
