"""deploy/grafana/recsvc.json: a valid Grafana dashboard on a `${datasource}` Prometheus
variable, whose every query parses and reads only metrics that recsvc, its batch jobs or its
recording rules really produce."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from recsvc.metrics import ServiceMetrics
from test_prometheus import (
    known_metric_names,
    load_rules,
    promql_metric_names,
    promtool,
    service_metric_names,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "recsvc.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "heatmap", "bargauge", "table", "gauge", "piechart",
               "barchart", "text", "row"}
# what Grafana puts in place of its variables, for promtool to parse the expressions
SUBSTITUTES = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m",
               "$rpc": ".*", "$arm": ".*"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


def variable_metrics(board: dict[str, Any]) -> set[str]:
    """Metrics the query variables read (label_values(metric, label))."""
    names = set()
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = _LABEL_VALUES.fullmatch(query.strip())
            assert match, f"variable {var['name']}: {query}"
            names.add(match.group(1))
    return names


def test_the_dashboard_is_a_valid_grafana_dashboard() -> None:
    board = dashboard()
    assert board["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["time"]["from"] and board["time"]["to"]
    assert board.get("id") is None  # importable anywhere
    ids = [p["id"] for p in panels(board)]
    assert all(isinstance(i, int) and i > 0 for i in ids) and len(ids) == len(set(ids))
    boxes = []
    for panel in panels(board):
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel.get("title"), panel["id"]
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert pos["h"] > 0 and 0 < pos["w"] <= 24 and pos["x"] >= 0 and \
            pos["x"] + pos["w"] <= 24 and pos["y"] >= 0, panel["title"]
        boxes.append((panel["title"], pos))
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
    for i, (a, p) in enumerate(boxes):  # no two panels overlap
        for b, q in boxes[i + 1:]:
            apart = (p["x"] + p["w"] <= q["x"] or q["x"] + q["w"] <= p["x"]
                     or p["y"] + p["h"] <= q["y"] or q["y"] + q["h"] <= p["y"])
            assert apart, f"{a!r} overlaps {b!r}"


def test_every_panel_and_variable_queries_the_datasource_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    text = DASHBOARD.read_text()  # no data source pinned anywhere else
    assert not re.search(r'"uid":\s*"(?!\$\{datasource\}|-- Grafana --|recsvc")', text)
    used = set(re.findall(r"\$\{?(\w+)", " ".join(expressions(board))))
    assert used - {"__rate_interval", "__range", "__interval"} <= set(variables)


def test_every_query_reads_metrics_that_recsvc_really_exports(tmp_path: Path) -> None:
    board = dashboard()
    known = known_metric_names(tmp_path)
    for expr in expressions(board):
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= known, f"{expr}: {names - known}"
    assert variable_metrics(board) <= known


def test_the_dashboard_shows_every_family_recsvc_and_its_jobs_export(tmp_path: Path) -> None:
    board = dashboard()
    read = set().union(*(promql_metric_names(e) for e in expressions(board)))
    recorded = {r["record"]: r["expr"] for r in load_rules() if "record" in r}
    for name in read & set(recorded):  # through a recording rule counts too
        read |= promql_metric_names(recorded[name])
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    for family in registry.collect():  # one series name of each family
        series = {"counter": "_total", "histogram": "_bucket", "gauge": ""}[family.type]
        assert family.name + series in read, f"not on the dashboard: {family.name}"
    assert {"recsvc_job_last_outcome", "recsvc_job_last_success_timestamp_seconds",
            "recsvc_job_duration_seconds", "recsvc_job_rows",
            "recsvc_job_model_validation_metric"} <= read
    assert service_metric_names()  # the names the check above is built on exist
    kinds = {p["type"] for p in panels(board)}
    assert {"heatmap", "timeseries", "stat"} <= kinds
    heatmap = next(p for p in panels(board) if p["type"] == "heatmap")
    assert heatmap["targets"][0]["format"] == "heatmap"
    assert "recsvc_request_duration_seconds_bucket" in heatmap["targets"][0]["expr"]


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each expression (Grafana's variables replaced by what Grafana sends)."""
    rules = []
    for k, query in enumerate(expressions(dashboard())):
        expr = query
        for variable, value in sorted(SUBSTITUTES.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        assert "$" not in expr, query
        rules.append({"record": f"dashboard:query_{k}:check", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", path)
