"""Prometheus rules: valid, unit-tested with promtool, and every alert documented."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"
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


def test_every_alert_is_labelled_annotated_and_has_a_runbook_in_the_readme():
    readme = (RULES_DIR.parent.parent / "README.md").read_text().lower()
    groups = yaml.safe_load((RULES_DIR / "rules.yml").read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 7
    for alert in alerts:
        assert re.fullmatch(r"Streamer[A-Z][A-Za-z]+", alert["alert"])
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys()
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert anchor == alert["alert"].lower() and f"#### {anchor}" in readme
