"""Prometheus rules: valid, unit-tested with promtool, and every alert documented."""

from __future__ import annotations

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
import dashboard as dashboard_code  # noqa: E402  (deploy/grafana/dashboard.py)

UNPLOTTED = dashboard_code.UNPLOTTED
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
    return {m for e in dashboard_exprs() for m in re.findall(r"\bstreamer_[a-z0-9_]+", e)}


def test_committed_dashboard_is_what_its_code_builds():
    assert DASHBOARD.read_text() == dashboard_code.render(), "run deploy/grafana/dashboard.py"


def test_dashboard_panels_have_units_current_types_and_variables():
    board = json.loads(DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert {p["type"] for p in board["panels"]} <= {"row", "timeseries", "stat"}
    assert all(p["fieldConfig"]["defaults"].get("unit") for p in panels)
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "job", "instance"}
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Throughput & lag", "Learning", "Forgetting", "Alignment & misalignment",
                    "Replay & checkpoints"]  # fmt: skip


def test_counters_are_only_read_through_rate_over_the_rate_interval():
    for expr in dashboard_exprs():
        for counter in re.findall(r"\bstreamer_[a-z0-9_]+_(?:total|bucket)\b", expr):
            assert re.search(rf"rate\({counter}\{{[^}}]*\}}\[\$__rate_interval\]\)", expr), expr


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
