"""deploy/prometheus: promtool checks the configuration and runs the rules' unit tests, the rules
read only metrics recsvc really exports, and a real Prometheus scraping a running recsvc (and
the batch jobs' textfiles) records every rule and fires only the alert it should.

Prometheus and promtool come from Debian's `prometheus` package, installed here when missing
(the same command as `make prometheus-tools`); a failed install fails the tests, it never
skips them. The helpers that find metric names in PromQL live here; test_grafana uses them."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from recsvc.data import schema
from recsvc.metrics import ServiceMetrics, write_job_metrics

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
RUNBOOK = PROM_DIR / "RUNBOOK.md"

# The lines of `make prometheus-tools`: Debian's package brings both binaries.
INSTALL_PROMETHEUS = (
    "command -v promtool >/dev/null && command -v prometheus >/dev/null || "
    "(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "--no-install-recommends -o DPkg::Lock::Timeout=300 prometheus)")

# Series Prometheus makes itself, which rules and dashboards may read beside recsvc's.
PROMETHEUS_OWN = frozenset({"up"})

SERVER_ERROR_CODES = ("INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                      "FAILED_PRECONDITION", "UNKNOWN", "DATA_LOSS")
RPCS = ("GetRedemptionHint", "BatchGetRedemptionHints", "RecommendRedemptions",
        "OptimizeCartSplit", "GetChurnRisk", "BatchGetChurnRisk")
ARMS = ("control", "propensity_heavy")


# --------------------------------------------------------------------------------------------
# Prometheus and promtool.
# --------------------------------------------------------------------------------------------
@functools.cache
def prometheus_tools() -> tuple[str, str]:
    """(prometheus, promtool): installed from Debian's package when missing; fails the test
    with the installer's output when that is impossible."""
    if not (shutil.which("promtool") and shutil.which("prometheus")):
        try:
            out = subprocess.run(["bash", "-c", INSTALL_PROMETHEUS], capture_output=True,
                                 text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"installing Prometheus timed out after 900 s: {INSTALL_PROMETHEUS}")
        if out.returncode != 0:
            pytest.fail(f"cannot install Prometheus ({INSTALL_PROMETHEUS}): exit "
                        f"{out.returncode}\n{(out.stdout + out.stderr)[-3000:]}")
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        pytest.fail(f"Prometheus was installed but is not on PATH: prometheus={prometheus}, "
                    f"promtool={promtool}")
    return prometheus, promtool


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([prometheus_tools()[1], *map(str, args)], capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{out.stdout}{out.stderr}"
    return out


# --------------------------------------------------------------------------------------------
# Rules, and the metric names PromQL reads.
# --------------------------------------------------------------------------------------------
def load_rules() -> list[dict[str, Any]]:
    """Every rule of the rule files, each with its group's name under `group`."""
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [{**rule, "group": group["name"], "file": path.name}
                      for rule in group["rules"]]
    return rules


def recording_rule_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
# words that are neither metrics nor followed by "(" (functions and aggregations always are,
# once their by/without clause is gone)
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and",
                       "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"})


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside strings, label
    matchers, ranges and label lists, that are not keywords and not called like functions.
    Grafana variables ($rpc, ${datasource}, $__rate_interval) are dropped first."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("", text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def service_metric_names() -> set[str]:
    """The series names recsvc serve exposes: ServiceMetrics on a fresh registry, each family
    with the sample suffixes its type gets on /metrics (multiprocess mode: no _created)."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}
    names = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def job_metric_names(directory: Path) -> set[str]:
    """The series names the batch jobs write: write_job_metrics' textfile, parsed back (a
    promoted run with rows and model metrics, so that every family is there)."""
    path = directory / "recsvc_job_names.prom"
    now = time.time()
    write_job_metrics(path, "retrain", outcome="promoted", started=now - 60, finished=now,
                      rows=10, models={"churn": ("v0001", {"roc_auc": 0.9})})
    return {sample.name for family in text_string_to_metric_families(path.read_text())
            for sample in family.samples}


def known_metric_names(directory: Path) -> set[str]:
    return (service_metric_names() | job_metric_names(directory) | recording_rule_names()
            | PROMETHEUS_OWN)


# --------------------------------------------------------------------------------------------
# promtool: the configuration, the rules and their unit tests.
# --------------------------------------------------------------------------------------------
def test_promtool_checks_the_configuration_and_the_rules() -> None:
    assert len(RULE_FILES) == 2 and RULE_TESTS
    out = promtool("check", "config", PROM_DIR / "prometheus.yml")
    for path in RULE_FILES:  # the configuration loads both rule files
        assert f"rules/{path.name}" in out.stdout + out.stderr
    promtool("check", "rules", *RULE_FILES)


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    out = promtool("test", "rules", *RULE_TESTS)
    assert "SUCCESS" in out.stdout and "FAILED" not in out.stdout


def test_every_alert_has_severity_summary_runbook_section_and_unit_tests() -> None:
    alerts = [rule for rule in load_rules() if "alert" in rule]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    assert {"RecsvcHighErrorRatio", "RecsvcLatencyP99OverBudget", "RecsvcDegradedAnswers",
            "RecsvcModelTooOld", "RecsvcRetrainFailed", "RecsvcRetrainStale",
            "RecsvcBatchScoringStale"} <= set(names)
    runbook = RUNBOOK.read_text()
    sections = {line[3:].strip().lower() for line in runbook.splitlines()
                if line.startswith("## ")}
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        link = rule["annotations"]["runbook"]
        assert link == f"deploy/prometheus/RUNBOOK.md#{name.lower()}", name
        assert name.lower() in sections, f"RUNBOOK.md has no section for {name}"
        section = runbook.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means:**", "**Check:**", "**Do:**"):
            assert part in section, f"RUNBOOK.md {name}: no {part}"

    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(names) <= fires, f"never shown firing: {set(names) - fires}"
    assert set(names) <= quiet, f"never shown quiet: {set(names) - quiet}"


def test_recording_rules_are_named_level_metric_operations_under_recsvc() -> None:
    for name in recording_rule_names():
        assert re.fullmatch(r"recsvc:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_the_promql_metric_name_parser() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (rpc, le) (rate(recsvc_request_duration_seconds_bucket'
        '{rpc=~"$rpc", code!="OK"}[$__rate_interval]))) > on (rpc) group_left '
        "recsvc:request_duration_seconds:p99_budget and on (rpc) sum(x_total offset 5m) "
        '> bool 1e-3 or absent(up{job="recsvc"}) unless label_replace(vector(1), "a", "b", '
        '"c", "d") or sum(foo) by (le) or time() - min without (instance) (bar:baz:max)') == {
        "recsvc_request_duration_seconds_bucket", "recsvc:request_duration_seconds:p99_budget",
        "x_total", "up", "foo", "bar:baz:max"}
    assert promql_metric_names("14 * 86400 > inf") == set()


def test_rules_read_only_metrics_that_recsvc_and_its_jobs_export(tmp_path: Path) -> None:
    known = known_metric_names(tmp_path)
    assert {"recsvc_requests_total", "recsvc_request_duration_seconds_bucket",
            "recsvc_model_info", "recsvc_job_last_outcome",
            "recsvc_job_last_success_timestamp_seconds"} <= known
    for rule in load_rules():
        unknown = promql_metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"


# --------------------------------------------------------------------------------------------
# A real Prometheus on this configuration, scraping a running recsvc.
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def textfile_collector(directory: Path) -> Iterator[str]:
    """What node_exporter's textfile collector does for the batch jobs: serve every *.prom
    file of `directory` on /metrics. Yields host:port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = "".join(p.read_text() for p in sorted(directory.glob("*.prom"))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def live_config(path: Path, recsvc_target: str, node_target: str) -> Path:
    """deploy/prometheus/prometheus.yml with the test's targets, 1 s intervals and absolute
    rule file paths."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM_DIR / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"recsvc", "node"}, "the test sets the targets of these two jobs"
    assert jobs["node"].get("honor_labels") is True  # the jobs' own `job` label survives
    jobs["recsvc"]["static_configs"] = [{"targets": [recsvc_target]}]
    jobs["node"]["static_configs"] = [{"targets": [node_target]}]
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def running_prometheus(config: Path, data: Path) -> Iterator[str]:
    """A Prometheus on a free loopback port; yields its base URL once it is ready."""
    prometheus = prometheus_tools()[0]
    port = _free_port()
    log = data.parent / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{url}/-/ready", timeout=5) as answer:
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 60 s:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return body["data"]


def query(url: str, promql: str) -> dict[str, float]:
    """An instant query's vector as {"label=value,...": value}."""
    out = {}
    for sample in api(url, "query", query=promql)["result"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(sample["metric"].items())
                          if k != "__name__")
        out[labels] = float(sample["value"][1])
    return out


def poll(what: str, check: Callable[[], str | None], timeout_s: float = 60) -> None:
    """Call `check` until it returns None (done) or the time is up; it returns what is still
    missing, which the failure reports."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            missing = check()
        except (OSError, urllib.error.URLError) as exc:
            missing = repr(exc)
        if missing is None:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {missing} after {timeout_s:.0f} s")
        time.sleep(0.5)


def _expect(url: str, promql: str, want: dict[str, Callable[[float], bool]]) -> str | None:
    got = query(url, promql)
    bad = {k: got.get(k) for k, ok in want.items() if k not in got or not ok(got[k])}
    return f"{promql}: {bad} (all: {got})" if bad else None


def _positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _zero(v: float) -> bool:
    return v == 0


def _ratio(v: float) -> bool:
    return 0 <= v <= 1


@pytest.mark.slow
def test_a_real_prometheus_scrapes_recsvc_records_every_rule_and_alerts(
        trained: Any, tmp_path: Path) -> None:
    from test_server_processes import client, recsvc_serve, serve_env

    prometheus_tools()  # installs before the clock of the test starts
    started = time.monotonic()
    env = serve_env(trained, RECSVC_COMPILED_MODELS="false")
    member = str(int(schema.read_table(trained.settings.data_dir, "members",
                                       ["member_id"])["member_id"].to_numpy()[0]))
    items = [str(int(i)) for i in schema.read_table(trained.settings.data_dir, "items",
                                                    ["item_id"])["item_id"].to_numpy()[:2]]
    # the jobs' textfiles: a retraining that failed an hour after its last success, a fresh
    # batch scoring; served as node_exporter's textfile collector would
    jobs = tmp_path / "metrics"
    now = time.time()
    write_job_metrics(jobs / "recsvc_retrain.prom", "retrain", outcome="failed",
                      started=now - 120, finished=now - 60, previous_success=now - 3600)
    write_job_metrics(jobs / "recsvc_score_batch.prom", "score_batch", outcome="succeeded",
                      started=now - 30, finished=now - 20, rows=6000)
    metrics_port = _free_port()

    def traffic(round_: int) -> None:
        arm = ARMS[round_ % 2]
        client(env, address, "hint", member, items[0], "--arm", arm)
        client(env, address, "hint", member, *items, "--arm", ARMS[(round_ + 1) % 2])
        client(env, address, "recommend", member, "--limit", "3")
        client(env, address, "cart", member, "1:25000:2", "2:990:1:cash", "--balance", "1234")
        client(env, address, "churn", member)
        client(env, address, "churn", member, member)
        client(env, address, "recommend", member, "--category", "no-such",
               ok=False)  # INVALID_ARGUMENT: the server knows no such category

    with recsvc_serve(env, "--metrics-port", str(metrics_port)) as (address, _), \
            textfile_collector(jobs) as node_target, \
            running_prometheus(live_config(tmp_path / "prometheus.yml",
                                           f"127.0.0.1:{metrics_port}", node_target),
                               tmp_path / "tsdb") as url:
        poll("both targets up", lambda: _expect(url, "up", {
            "instance=" + f"127.0.0.1:{metrics_port},job=recsvc": lambda v: v == 1,
            f"instance={node_target},job=node": lambda v: v == 1}))
        # A series a call creates is seen by rate() only from its second sample: one round
        # to create them, a scrape, a second round that moves them.
        traffic(0)
        poll("the first round scraped", lambda: _expect(
            url, 'count(count by (rpc, code) (recsvc_requests_total))', {"": lambda v: v >= 7}))
        traffic(1)

        poll("recording rules", lambda: (
            _expect(url, "recsvc:requests:rate5m",
                    {**{f"code=OK,rpc={rpc}": _positive for rpc in RPCS},
                     "code=INVALID_ARGUMENT,rpc=RecommendRedemptions": _positive})
            # INVALID_ARGUMENT is the caller's: no server errors anywhere
            or _expect(url, "recsvc:request_errors:ratio_rate5m",
                       {f"rpc={rpc}": _zero for rpc in RPCS})
            or _expect(url, "recsvc:request_duration_seconds:p99_5m",
                       {f"rpc={rpc}": _positive for rpc in RPCS})
            or _expect(url, "recsvc:request_duration_seconds:p50_5m",
                       {f"rpc={rpc}": _positive for rpc in RPCS})
            or _expect(url, "recsvc:request_duration_seconds:p99_budget",
                       {f"rpc={rpc}": _positive for rpc in RPCS})
            or _expect(url, "recsvc:degraded_answers:ratio_rate5m",
                       {f"rpc={rpc}": _zero for rpc in RPCS})
            or _expect(url, "recsvc:hints_points_better:ratio_rate5m",
                       {f"arm={arm}": _ratio for arm in ARMS})
            or _expect(url, "recsvc:model_age_seconds:max",
                       {f"model={m}": lambda v: 0 < v < 86400 for m in ("churn", "propensity")})
            or _expect(url, "recsvc:job_last_success_age_seconds:min",
                       {"job=retrain": lambda v: 3600 <= v < 3600 + 600,
                        "job=score_batch": lambda v: 20 <= v < 600})))

        def rules_healthy() -> str | None:
            rules = [r for g in api(url, "rules")["groups"] for r in g["rules"]]
            if len(rules) != len(load_rules()):
                return f"{len(rules)} rules loaded of {len(load_rules())}"
            bad = [(r["name"], r["health"], r.get("lastError")) for r in rules
                   if r["health"] != "ok"]
            return f"unhealthy rules {bad}" if bad else None

        poll("every rule evaluates", rules_healthy)

        def alerts() -> dict[str, str]:
            return {a["labels"]["alertname"]: a["state"] for a in api(url, "alerts")["alerts"]}

        # the failed retraining fires at once (no `for`); nothing else is wrong
        poll("RecsvcRetrainFailed firing", lambda: None if alerts().get(
            "RecsvcRetrainFailed") == "firing" else str(alerts()))
        quiet = {"RecsvcDown", "RecsvcHighErrorRatio", "RecsvcDegradedAnswers",
                 "RecsvcModelReloadRefused", "RecsvcModelTooOld", "RecsvcRetrainStale",
                 "RecsvcBatchScoringFailed", "RecsvcBatchScoringStale"}
        assert not quiet & set(alerts()), alerts()

        # what the service serves is what test_grafana and the rules take it to export
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as answer:
            served = {s.name for f in text_string_to_metric_families(answer.read().decode())
                      for s in f.samples if s.name.startswith("recsvc_")}
        expected = service_metric_names()
        assert served <= expected, served - expected
        assert {"recsvc_requests_total", "recsvc_request_duration_seconds_bucket",
                "recsvc_hints_total", "recsvc_model_info",
                "recsvc_model_created_timestamp_seconds"} <= served
    assert time.monotonic() - started < 180


def test_remembered_series_are_the_metrics_own_and_count_the_same() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from recsvc.metrics import remembered

    registry = CollectorRegistry()
    calls = remembered(Counter("t_calls_total", "calls", ["rpc", "code"], registry=registry))
    took = remembered(Histogram("t_seconds", "took", ["rpc"], registry=registry))
    first = calls.labels("Hint", "OK")
    assert calls.labels("Hint", "OK") is first
    assert calls.labels("Hint", "INTERNAL") is not first
    for _ in range(3):
        calls.labels("Hint", "OK").inc()
        took.labels("Hint").observe(0.002)
    assert registry.get_sample_value("t_calls_total", {"rpc": "Hint", "code": "OK"}) == 3
    assert registry.get_sample_value("t_calls_total", {"rpc": "Hint", "code": "INTERNAL"}) == 0
    assert registry.get_sample_value("t_seconds_count", {"rpc": "Hint"}) == 3
    with pytest.raises(ValueError):  # still checked the first time: a wrong number of values
        calls.labels("Hint")
