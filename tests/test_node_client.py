"""The Node.js client (clients/node, @grpc/grpc-js loading protos/recsvc/v1/recsvc.proto at run
time) against the real `recsvc serve`: every RPC answered, int64 as strings, the cart split
adding up, and a bad field answered INVALID_ARGUMENT with a google.rpc.BadRequest naming it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from test_server_processes import _ids, recsvc_serve, serve_env

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "clients" / "node"
RPCS = ["GetRedemptionHint", "BatchGetRedemptionHints", "RecommendRedemptions",
        "OptimizeCartSplit", "GetChurnRisk", "BatchGetChurnRisk", "GetNudges"]


@pytest.fixture(scope="module")
def node() -> str:
    """node, with the client's locked dependencies installed (`npm ci` when they are not)."""
    node_bin, npm = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm is None:
        pytest.fail("Node.js and npm are needed for clients/node (Debian: apt-get install "
                    "nodejs npm)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        out = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                             cwd=NODE_DIR, capture_output=True, text=True, timeout=300,
                             check=False)
        if out.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed:\n{out.stdout}{out.stderr}")
    return node_bin


def _smoke(node: str, address: str, *args: str) -> tuple[int, dict[str, Any], str]:
    out = subprocess.run([node, "client.js", address, *args], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=120, check=False)
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"client.js printed no JSON (exit {out.returncode}):\n"
                    f"{out.stdout}{out.stderr}")
    return out.returncode, report, out.stderr


def test_the_client_loads_the_contract_the_service_implements(node: str) -> None:
    from recsvc.v1 import recsvc_pb2

    script = ("const s = require('./client').loadService().service;"
              "console.log(JSON.stringify(Object.values(s).map(m => m.path)))")
    out = subprocess.run([node, "-e", script], cwd=NODE_DIR, capture_output=True, text=True,
                         timeout=60, check=True)
    service = recsvc_pb2.DESCRIPTOR.services_by_name["RedemptionService"]
    assert sorted(json.loads(out.stdout)) == sorted(
        f"/{service.full_name}/{m.name}" for m in service.methods)
    assert sorted(m.name for m in service.methods) == sorted(RPCS)


def test_the_node_client_calls_every_rpc_of_the_real_service(node: str, trained: Any) -> None:
    env = serve_env(trained, RECSVC_COMPILED_MODELS="false")
    member, item = _ids(trained, "members", "member_id")[0], _ids(trained, "items", "item_id")[0]
    with recsvc_serve(env, "--metrics-port", "0") as (address, proc):
        code, report, stderr = _smoke(node, address, "--member", str(member),
                                      "--item", str(item))
        assert code == 0 and report["ok"] is True, json.dumps(report, indent=1) + stderr
        calls = report["calls"]
        assert list(calls) == RPCS and all(c["ok"] for c in calls.values())
        answers = {name: c["response"] for name, c in calls.items()}
        # ids echoed, int64 as decimal strings
        assert answers["GetRedemptionHint"]["hint"]["item_id"] == str(item)
        assert [h["item_id"] for h in answers["BatchGetRedemptionHints"]["hints"]] == \
            [str(item)] * 2
        assert answers["GetChurnRisk"]["risk"]["member_id"] == str(member)
        assert [r["member_id"] for r in answers["BatchGetChurnRisk"]["risks"]] == \
            [str(member)] * 2
        assert answers["GetChurnRisk"]["model_version"] == trained.registry.production("churn")
        assert [o["rank"] for o in answers["RecommendRedemptions"]["options"]] == [1, 2, 3]
        assert answers["GetRedemptionHint"]["hint"]["points_price"].isdigit()
        split = answers["OptimizeCartSplit"]
        assert all(isinstance(split[k], str) for k in
                   ("points_used", "cash_minor", "order_total_minor", "points_value_minor"))
        assert int(split["points_value_minor"]) + int(split["cash_minor"]) == \
            int(split["order_total_minor"]) == 2 * 25_000 + 990
        assert int(split["points_used"]) <= 1234 and split["lines"][1]["points"] == "0"
        # enums by name
        assert split["binding_rule"].startswith("BINDING_RULE_")
        # a bad field: INVALID_ARGUMENT, with the BadRequest from grpc-status-details-bin
        bad = report["bad_request"]
        assert bad["ok"] is True and bad["code"] == 3 and bad["code_name"] == "INVALID_ARGUMENT"
        assert bad["status"]["code"] == 3
        details = bad["status"]["details"]
        assert [d["type_url"] for d in details] == ["type.googleapis.com/google.rpc.BadRequest"]
        assert [v["field"] for v in details[0]["field_violations"]] == ["limit"]

        # an unknown item is NOT_FOUND: reported, and the run fails
        code, report, stderr = _smoke(node, address, "--member", str(member),
                                      "--item", "987654321")
        assert code == 1 and report["ok"] is False
        assert report["calls"]["GetRedemptionHint"]["code_name"] == "NOT_FOUND"
        assert "GetRedemptionHint" in stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_the_node_client_fails_when_nothing_answers(node: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free again once closed: nothing listens there
    code, report, stderr = _smoke(node, f"127.0.0.1:{port}", "--deadline-ms", "1000")
    assert code == 1 and report["ok"] is False
    assert "not reachable" in report["error"] and "not reachable" in stderr


def test_the_node_client_over_mutual_tls_with_a_token(node: str, trained: Any,
                                                     tmp_path: Path) -> None:
    from test_security import TOKEN, make_pki

    pki = make_pki(tmp_path)
    env = serve_env(trained, RECSVC_COMPILED_MODELS="false",
                    RECSVC_TLS_CERT_FILE=str(pki["server.crt"]),
                    RECSVC_TLS_KEY_FILE=str(pki["server.key"]),
                    RECSVC_TLS_CLIENT_CA_FILE=str(pki["ca.crt"]), RECSVC_AUTH_TOKENS=TOKEN)
    member, item = _ids(trained, "members", "member_id")[0], _ids(trained, "items", "item_id")[0]
    tls = ("--tls-ca", str(pki["ca.crt"]), "--tls-cert", str(pki["client.crt"]),
           "--tls-key", str(pki["client.key"]))
    ids = ("--member", str(member), "--item", str(item), "--deadline-ms", "5000")
    with recsvc_serve(env, "--metrics-port", "0") as (address, proc):
        code, report, stderr = _smoke(node, address, *ids, *tls, "--token", TOKEN)
        assert code == 0 and report["ok"] is True, json.dumps(report, indent=1) + stderr
        # without the token: every call UNAUTHENTICATED
        code, report, _ = _smoke(node, address, *ids, *tls)
        assert code == 1
        assert {c["code_name"] for c in report["calls"].values()} == {"UNAUTHENTICATED"}
        # without a client certificate the handshake fails: nothing is reachable
        code, report, _ = _smoke(node, address, *ids, "--tls-ca", str(pki["ca.crt"]),
                                 "--token", TOKEN)
        assert code == 1 and "not reachable" in report["error"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
