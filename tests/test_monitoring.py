"""Prometheus rules: valid, unit-tested with promtool, and every alert documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).parent.parent / "deploy" / "prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool: apt-get install prometheus"
)


def rule_metric_names() -> set[str]:
    """Every streamer_* series a rule reads (recording rules' own names excluded)."""
    text = (RULES_DIR / "rules.yml").read_text()
    exprs = [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    return {m for e in exprs for m in re.findall(r"\bstreamer_[a-z0-9_]+", e)}


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
