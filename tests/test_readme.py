"""The README's commands, run as a newcomer runs them.

Every command in the README's ```sh blocks has an entry in COMMANDS: how this test runs it (the
same line, with the test's own address, Redis database and output paths where the README names
the defaults) and what its answer must show. A command the README gains without an entry here,
or an entry the README no longer shows, fails `test_every_readme_command_has_an_entry`.

`test_the_readme_commands_work` runs them in the README's order in a temporary data directory,
from nothing, as a fresh checkout does: `make run` simulates the default population (20,000
members x 540 days: the examples name members and items that show each feature in it), builds
its features, trains, flags fraud and serves; the client calls, `buf curl`, `make stop` and the
variations follow. Each must exit as expected, show what its comment promises, and keep the
shape of its output: the JSON keys of the client's answers and the lines the jobs print, with
numbers and paths taken out, compared with `fixtures/readme_shapes.json` (re-captured with
RECSVC_README_CAPTURE=1 after a deliberate change). Nothing here is timed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHAPES = Path(__file__).parent / "fixtures" / "readme_shapes.json"
BUF = ROOT / "node_modules" / ".bin" / "buf"
README_ADDRESS = "127.0.0.1:50051"
README_REDIS = "redis://127.0.0.1:6379/0"
FIRST_RUN_S = 1800  # a generous bound on `make run` building everything (~5 min here)


def readme_commands() -> list[str]:
    """The command lines of the README's ```sh blocks, in order, comments removed."""
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.lstrip().startswith("```"):  # in a list item too (indented)
            inside = line.strip() == "```sh"
            continue
        if inside:
            command = _strip_comment(line).strip()
            if command:
                lines.append(command)
    return lines


def _strip_comment(line: str) -> str:
    """The line without a trailing `# ...` comment (a `#` after a space, outside quotes)."""
    quote = ""
    for at, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (at == 0 or line[at - 1].isspace()):
            return line[:at]
    return line


# --------------------------------------------------------------------------------------------
# What each command must show.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    check: Callable[[Any], None] | None = None  # on the parsed JSON (client) or the Result
    codes: tuple[int, ...] = (0,)
    json: bool = False  # the output is one JSON document (the client)
    shape: bool = True  # compared with the captured shape
    why_not_run: str = ""  # set: listed here but not run by this test, and why


@dataclass
class Result:
    code: int
    out: str
    err: str


def _hint_shows_points_better_and_alternates(answer: Any) -> None:
    better, away = answer["hints"]
    assert better["itemId"] == "6" and better["pointsBetter"] and better["inStock"]
    assert away["itemId"] == "88" and not away["inStock"] and len(away["alternates"]) >= 2
    assert "REASON_CODE_OUT_OF_STOCK" in away["reasons"]


def _recommend_shows_ranked_affordable_options(answer: Any) -> None:
    assert answer["pointsBalance"] == "3470" and len(answer["options"]) == 5
    assert [o["rank"] for o in answer["options"]] == [1, 2, 3, 4, 5]
    assert any(o["pointsGap"] == "0" for o in answer["options"])


def _cart_uses_points_under_a_rule(answer: Any) -> None:
    assert int(answer["pointsUsed"]) > 0 and answer["bindingRule"] != "BINDING_RULE_UNSPECIFIED"
    assert answer["advice"], "the wanted items are worth more per point: advice expected"
    cash_line = answer["lines"][1]
    assert cash_line["points"] == "0"  # the ":cash" line takes no points


def _churn_shows_segments_and_actions(answer: Any) -> None:
    risks = answer["risks"]
    assert [r["memberId"] for r in risks] == ["1", "2", "66"]
    assert len({r["segment"] for r in risks}) >= 2
    assert all(r["action"]["code"] and len(r["drivers"]) == 3 for r in risks)


def _nudges_shows_a_low_balance_with_options(answer: Any) -> None:
    kinds = [n["kind"] for n in answer["nudges"]]
    assert "NUDGE_KIND_LOW_BALANCE" in kinds
    low = answer["nudges"][kinds.index("NUDGE_KIND_LOW_BALANCE")]
    assert any(int(o["pointsPrice"]) <= 60 for o in low["options"])


def _flagged_member_asks_verification(answer: Any) -> None:
    assert answer["verification"]["required"] and answer["verification"]["flags"]


def _lists_the_service(result: Result) -> None:
    assert "recsvc.v1.RedemptionService" in result.out
    assert "grpc.reflection.v1.ServerReflection" in result.out


def _buf_hint(result: Result) -> None:
    answer = json.loads(result.out)
    assert answer["hint"]["itemId"] == "6" and "recommendationIndex" in answer["hint"]["factors"]


def _refused_then_rebuilt(result: Result) -> None:
    assert "not 100,000 members" in result.err and "make clean" in result.err
    assert "tables: none" in result.out and "simulating 500 members x 90 days" in result.out


def _nudges_job_not_degraded(result: Result) -> None:
    assert "degraded" not in result.out and "to " in result.out


def _usage(result: Result) -> None:
    assert result.out.startswith("usage: recsvc ")


CLIENT = ".venv/bin/recsvc client "
_BY_HAND = ("tests/test_engine.py::test_the_jobs_run_on_a_scheduler_and_workers_started_by_hand "
            "starts a scheduler and a worker so, on a free port, and runs score-batch on them")
_ON_DASK = ("tests/test_engine.py runs these jobs' functions on a Dask LocalCluster and checks "
            "them against the local engine's (snapshots, materialisation, training)")
COMMANDS: dict[str, Entry] = {
    "make run": Entry(),  # started first, in the background; `make stop` ends it
    "make test": Entry(why_not_run="the suite itself"),
    CLIENT + "hint 1 6 88 --balance 640":
        Entry(_hint_shows_points_better_and_alternates, json=True),
    CLIENT + "recommend 66 --limit 5": Entry(_recommend_shows_ranked_affordable_options, json=True),
    CLIENT + "cart 66 1:25000:2 2:990:1:cash": Entry(_cart_uses_points_under_a_rule, json=True),
    CLIENT + "churn 1 2 66": Entry(_churn_shows_segments_and_actions, json=True),
    CLIENT + "nudges 1 --balance 60 --channel push --dry-run":
        Entry(_nudges_shows_a_low_balance_with_options, json=True),
    CLIENT + "hint 96 6": Entry(_flagged_member_asks_verification, json=True),
    "node_modules/.bin/buf curl --protocol grpc --http2-prior-knowledge --list-services "
    "http://127.0.0.1:50051": Entry(_lists_the_service),
    "node_modules/.bin/buf curl --protocol grpc --http2-prior-knowledge --data "
    "'{\"memberId\": \"1\", \"itemId\": \"6\"}' "
    "http://127.0.0.1:50051/recsvc.v1.RedemptionService/GetRedemptionHint":
        Entry(_buf_hint, shape=False),
    "make clean && make features SIM_MEMBERS=100000": Entry(_refused_then_rebuilt),
    "RECSVC_REDIS_URL=redis://127.0.0.1:6379/0 make features": Entry(),
    ".venv/bin/recsvc simulate --help": Entry(_usage, shape=False),
    ".venv/bin/recsvc import-transactions --help": Entry(_usage, shape=False),
    "make train": Entry(codes=(0, 3)),  # 3: the gate kept the production version (same data)
    "make score-batch OUT=scores.csv": Entry(),
    "make fraud-flags": Entry(),
    "make catalogue-report": Entry(),
    "make liability-report": Entry(),
    "make nudges AS_OF=2026-06-24 DRY_RUN=1": Entry(_nudges_job_not_degraded),
    # the Dask cluster by hand: processes that run until stopped, each in a terminal
    ".venv/bin/dask scheduler --port 8786": Entry(why_not_run=_BY_HAND),
    ".venv/bin/dask worker tcp://127.0.0.1:8786 --nthreads 1": Entry(why_not_run=_BY_HAND),
    ".venv/bin/recsvc features --engine dask --scheduler 127.0.0.1:8786":
        Entry(why_not_run=_ON_DASK),
    ".venv/bin/recsvc train --engine dask --scheduler 127.0.0.1:8786":
        Entry(why_not_run=_ON_DASK),
    ".venv/bin/recsvc score-batch --engine dask --scheduler 127.0.0.1:8786":
        Entry(why_not_run=_BY_HAND),
}


def test_every_readme_command_has_an_entry() -> None:
    shown = readme_commands()
    assert "make run" in shown and CLIENT + "hint 1 6 88 --balance 640" in shown
    assert sorted(set(shown) - set(COMMANDS)) == [], "README commands this test does not run"
    assert sorted(set(COMMANDS) - set(shown)) == [], "entries the README no longer shows"


def test_comments_are_cut_outside_quotes_only() -> None:
    assert _strip_comment("make run    # serve").strip() == "make run"
    assert _strip_comment("x --data '{\"a\": \"#1\"}'  # call").strip() == \
        "x --data '{\"a\": \"#1\"}'"


# --------------------------------------------------------------------------------------------
# Shapes: what a change of output looks like.
# --------------------------------------------------------------------------------------------
def json_shape(value: Any, path: str = "") -> set[str]:
    """Every key path in `value` (list items merged as `[]`)."""
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            out |= {f"{path}.{k}"} | json_shape(v, f"{path}.{k}")
        return out
    if isinstance(value, list):
        return set().union(*(json_shape(v, f"{path}[]") for v in value)) if value else set()
    return set()


NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?%?")


DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?|\d{8}")
HEX = re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{12,}\b")  # a digest: some letter in it


def text_shape(out: str, data_dir: Path, project: str = "") -> list[str]:
    """The distinct lines printed, with paths, the test's project, dates, digests and numbers
    taken out."""
    lines = set()
    for raw in out.splitlines():
        line = raw.replace(str(data_dir), "<data>").replace(str(ROOT), "<repo>")
        line = line.replace(project, "<project>") if project else line
        line = re.sub(r"/tmp/\S+", "<tmp>", line)
        # digests first: one may hold eight digits in a row, which would read as a date
        line = NUMBER.sub("<n>", DATE.sub("<date>", HEX.sub("<hex>", line)))
        line = re.sub(r"\s+", " ", line).strip()
        if line:
            lines.add(line)
    return sorted(lines)


def test_shapes_see_keys_and_words_not_values(tmp_path: Path) -> None:
    assert json_shape({"a": [{"b": 1}, {"c": 2}], "d": {}}) == {".a", ".a[].b", ".a[].c", ".d"}
    assert text_shape(f"wrote 1,234 rows to {tmp_path}/x.csv in 0.5 s\n", tmp_path) == \
        ["wrote <n> rows to <data>/x.csv in <n> s"]
    assert text_shape("as of 2026-06-25 00:00 UTC, fingerprint 3f9a0c2bd81e77, p_ab12\n",
                      tmp_path, "p_ab12") == ["as of <date> UTC, fingerprint <hex>, <project>"]
    assert text_shape("fingerprint 5a20261206df3d1, as of 20261206\n", tmp_path) == \
        ["fingerprint <hex>, as of <date>"]


# --------------------------------------------------------------------------------------------
# Running them.
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Newcomer:
    data_dir: Path
    address: str
    env: dict[str, str]
    redis_url: str
    project: str

    def command(self, shown: str) -> str:
        """The README's line as this test runs it: its address, Redis database and project,
        and outputs under the data directory."""
        line = shown.replace(README_ADDRESS, self.address)
        line = line.replace(f"RECSVC_REDIS_URL={README_REDIS}", f"RECSVC_REDIS_URL="
                            f"{self.redis_url} RECSVC_FEAST_PROJECT={self.project}")
        line = line.replace("OUT=scores.csv", f"OUT={self.data_dir}/scores.csv")
        # a bigger population than the test can afford: the refusal, then a small one
        if "SIM_MEMBERS=100000" in line:
            small = f"RECSVC_DATA_DIR={self.data_dir}-small"
            line = (f"{line.split('&&')[1].strip()}; "
                    f"{small} make clean && {small} make features SIM_MEMBERS=500 SIM_DAYS=90")
        return line

    def run(self, shown: str, timeout: float = 900) -> Result:
        done = subprocess.run(["bash", "-c", self.command(shown)], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def newcomer(tmp_path: Path, redis_url: str) -> Iterator[Newcomer]:
    # a newcomer's shell: none of our settings, and no make above (`make test` runs this
    # suite; its MAKELEVEL would make each make print "Entering directory")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECSVC_") and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    address = f"127.0.0.1:{_free_port()}"
    data_dir = tmp_path / "data"
    env |= {"RECSVC_DATA_DIR": str(data_dir), "RECSVC_GRPC_ADDRESS": address,
            "RECSVC_METRICS_PORT": str(_free_port()), "PYTHONUNBUFFERED": "1"}
    project = f"recsvc_test_{uuid.uuid4().hex[:10]}"
    yield Newcomer(data_dir, address, env, redis_url, project)
    import redis

    from recsvc.adapters.online_write import delete_project_keys

    client = redis.Redis.from_url(redis_url)
    try:
        delete_project_keys(client, project)
    finally:
        client.close()


def _wait_serving(proc: subprocess.Popen[str], log: Path, address: str) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + FIRST_RUN_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make run exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        with grpc.insecure_channel(address) as channel:
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                status = None
        if status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(2)
    raise AssertionError(f"make run not serving after {FIRST_RUN_S} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.redis
def test_the_readme_commands_work(newcomer: Newcomer, tmp_path: Path) -> None:
    shown = readme_commands()
    shapes: dict[str, Any] = {}
    log = tmp_path / "make-run.log"
    with log.open("w") as out:
        server = subprocess.Popen(["make", "run"], cwd=ROOT, env=newcomer.env, stdout=out,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_serving(server, log, newcomer.address)
        run_log = log.read_text()
        assert "Registry cache expired" not in run_log and "DeprecationWarning" not in run_log
        served = [i for i, line in enumerate(shown)
                  if line.startswith((CLIENT, "node_modules/.bin/buf"))]
        for at, line in enumerate(shown):
            entry = COMMANDS[line]
            if line == "make run" or entry.why_not_run:
                continue
            if line.startswith("node_modules/.bin/buf") and not BUF.exists():
                pytest.fail("buf is not installed: `make buf` (make lint installs it too)")
            result = newcomer.run(line)
            assert result.code in entry.codes, (line, result.code, result.out[-2000:],
                                                result.err[-2000:])
            answer: Any = json.loads(result.out) if entry.json else result
            if entry.check is not None:
                entry.check(answer)
            if entry.shape:
                shapes[line] = (sorted(json_shape(answer)) if entry.json
                                else text_shape(result.out, newcomer.data_dir,
                                                newcomer.project))
            if at == served[-1]:  # the calls are done: stop the service as the README says
                stopped = newcomer.run("make stop")
                assert "sent SIGTERM" in stopped.out, stopped
                assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert (newcomer.data_dir / "nudges" / "nudges-2026-06-24.csv").exists()
        header = (newcomer.data_dir / "scores.csv").read_text().split("\n", 1)[0].split(",")
        assert {"member_id", "churn_probability", "segment", "action"} <= set(header)
        assert not list(ROOT.glob("nudges-*.csv"))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    if os.environ.get("RECSVC_README_CAPTURE"):
        SHAPES.write_text(json.dumps(shapes, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"captured {SHAPES.name}: review the diff and commit it")
    want = json.loads(SHAPES.read_text())
    for line, got in shapes.items():
        assert got == want.get(line), f"the output of `{line}` changed shape"
