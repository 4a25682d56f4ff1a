"""Prometheus rules: valid, unit-tested with promtool, and every alert documented."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"
DOCS = DEPLOY.parent / "docs"
RULES_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "streamer.json"
sys.path.insert(0, str(DEPLOY / "grafana"))
import console_page  # noqa: E402  (deploy/grafana/console_page.py)
import dashboard as dashboard_code  # noqa: E402  (deploy/grafana/dashboard.py)

UNPLOTTED = dashboard_code.UNPLOTTED
METRIC = r"\b(?:streamer|process|python)_[a-z0-9_]+"
# What Grafana would put in for the dashboard's variables, in a 30 s-scrape setup.
GRAFANA_VALUES = {"job": "streamer", "instance": "10.0.0.7:8439|10.0.0.8:8439",
                  "__rate_interval": "2m", "datasource": "prometheus"}  # fmt: skip
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool: apt-get install prometheus"
)


def rule_metric_names() -> set[str]:
    """Every streamer_* series a rule reads (recording rules' own names excluded)."""
    text = (RULES_DIR / "rules.yml").read_text()
    exprs = [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    return {m for e in exprs for m in re.findall(r"\bstreamer_[a-z0-9_]+", e)}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def dashboard_metric_names() -> set[str]:
    """Every series the dashboard reads: the daemon's own and its process and GC collectors'."""
    return {m for e in dashboard_exprs() for m in re.findall(METRIC, e)}


def test_committed_dashboard_is_what_its_code_builds():
    assert DASHBOARD.read_text() == dashboard_code.render(), "run deploy/grafana/dashboard.py"


def test_committed_console_page_is_what_the_dashboards_panels_build():
    assert console_page.CONSOLE.read_text() == console_page.render_console(), (
        "run deploy/grafana/console_page.py"
    )


def test_the_console_page_has_every_panel_and_maps_every_unit_the_dashboard_uses():
    page = console_page.CONSOLE.read_text()
    for _, panel in dashboard_code.panels():
        assert f">{html.escape(panel['title'])}</" in page, panel["title"]
        units = console_page.STAT_UNITS if panel["type"] == "stat" else console_page.GRAPH_UNITS
        assert panel["fieldConfig"]["defaults"]["unit"] in units
    leaked = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", page)) - {"else", "end"}
    assert not leaked  # Grafana {{label}} legends, which Prometheus would run as functions


def test_dashboard_panels_have_units_current_types_and_variables():
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert {p["type"] for p in board["panels"]} <= {"row", "timeseries", "stat"}
    assert all(p["fieldConfig"]["defaults"].get("unit") for p in panels)
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "job", "instance"}
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Throughput & lag", "Learning", "Forgetting", "Alignment & misalignment",
                    "Replay & checkpoints", "Publishing & rollback", "Process"]  # fmt: skip


def test_counters_are_only_read_through_rate_over_the_rate_interval():
    for expr in dashboard_exprs():
        for counter in re.findall(METRIC + r"_(?:total|bucket)\b", expr):
            assert re.search(rf"rate\({counter}\{{[^}}]*\}}\[\$__rate_interval\]\)", expr), expr


def test_the_dashboard_shows_process_memory_and_file_descriptors_and_lag_by_topic():
    board = json.loads(DASHBOARD.read_text())
    targets = {t["expr"].split("{")[0]: t for p in board["panels"] for t in p.get("targets", [])}
    assert {"process_resident_memory_bytes", "process_open_fds", "process_max_fds"} <= set(targets)
    assert (
        targets["streamer_kafka_partition_lag_records"]["legendFormat"] == "{{topic}}/{{partition}}"
    )


@needs_promtool
def test_every_dashboard_query_parses_with_promtool_once_grafana_variables_are_filled(tmp_path):
    board = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs() + [
        re.fullmatch(r"label_values\((.+), \w+\)", v["query"]["query"]).group(1)
        for v in board["templating"]["list"] if v["type"] == "query"
    ]  # fmt: skip
    filled = [dashboard_code.promql(e, GRAFANA_VALUES) for e in exprs]
    assert not [e for e in filled if "$" in e]
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(filled)]
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )
    run = subprocess.run(["promtool", "check", "rules", "queries.yml"], cwd=tmp_path,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0 and f"{len(rules)} rules found" in run.stdout, (
        run.stdout + run.stderr
    )


def test_filling_a_variable_nobody_defines_fails_loudly():
    assert dashboard_code.promql('up{job="$job"}[${__rate_interval}]', GRAFANA_VALUES) == (
        'up{job="streamer"}[2m]'
    )
    with pytest.raises(KeyError, match="cluster"):
        dashboard_code.promql('up{cluster="$cluster"}', GRAFANA_VALUES)


@needs_promtool
def test_rules_are_valid_and_their_unit_tests_pass():
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]):
        run = subprocess.run(["promtool", *args], cwd=RULES_DIR, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_labelled_annotated_and_has_an_absolute_runbook_url_into_the_runbooks():
    runbooks = (DOCS / "runbooks.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^## (.+)$", runbooks, re.M)}
    groups = yaml.safe_load((RULES_DIR / "rules.yml").read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 7
    for alert in alerts:
        assert re.fullmatch(r"Streamer[A-Z][A-Za-z]+", alert["alert"])
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys()
        url = urllib.parse.urlsplit(alert["annotations"]["runbook_url"])
        assert url.scheme in {"http", "https"} and url.netloc, url  # Alertmanager needs absolute
        assert url.path.endswith("/docs/runbooks.md") and url.fragment in anchors, url
        assert url.fragment == github_anchor(alert["alert"])
    assert anchors == {github_anchor(a["alert"]) for a in alerts}  # no runbook without an alert


def test_every_runbook_url_starts_with_the_one_base_kubernetes_deploys_configure():
    settings = (DEPLOY / "k8s" / "base" / "monitoring.env").read_text()
    base = dict(line.split("=", 1) for line in settings.split())["RUNBOOK_BASE_URL"]
    groups = yaml.safe_load((RULES_DIR / "rules.yml").read_text())["groups"]
    urls = [r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r]
    assert {url.split("#")[0] for url in urls} == {base}


def test_the_metric_reference_names_every_family_the_daemon_exports():
    from prometheus_client import CollectorRegistry

    from streamer.intake.source import SourceStats
    from streamer.service.collectors import PipelineCollector, PipelineView
    from streamer.service.metrics import Metrics
    from streamer.state.publisher import PublishMetrics

    registry = CollectorRegistry()
    Metrics(registry, process=False)
    PublishMetrics(registry)  # registered when publish.enabled
    registry.register(PipelineCollector(lambda: PipelineView(SourceStats(last_poll=1.0))))
    suffix = {"counter": "_total", "info": "_info"}
    names = {f.name + suffix.get(f.type, "") for f in registry.collect()}
    reference = (DEPLOY.parent / "docs" / "metrics.md").read_text()
    assert {n for n in names if f"`{n}`" not in reference} == set()
