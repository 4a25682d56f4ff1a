"""A real Prometheus server scrapes a training daemon: its HTTP API reads the figures back,
every dashboard query finds data, and the console page draws it in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from streamer.config import KafkaConfig
from streamer.dev.broker import free_port
from streamer.dev.produce import publish

from . import chromium
from .conftest import ThreadedDaemon, daemon_config, new_topic, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus"),
]
DEPLOY = Path(__file__).parent.parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
sys.path.insert(0, str(DEPLOY / "grafana"))
import dashboard  # noqa: E402  (deploy/grafana/dashboard.py)

RATE = "10s"  # $__rate_interval for a 1 s scrape: a few scrapes per window
VALUES = {"job": "streamer", "instance": ".+", "__rate_interval": RATE}


@dataclass(frozen=True)
class Scraped:
    port: int  # Prometheus's
    started: float  # when Prometheus started (epoch seconds)


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except OSError:  # the server is still starting
        return []
    return body["data"]["result"] if body["status"] == "success" else []


def _value(port: int, expr: str) -> float | None:
    result = _query(port, expr)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def scraped(broker, tmp_path_factory, digit_stream) -> Iterator[Scraped]:
    """One daemon training for ~30 s (40 records/s) while Prometheus scrapes it every second,
    with the rules loaded and the console page served."""
    tmp = tmp_path_factory.mktemp("prometheus")
    topic = new_topic()
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
    producer = threading.Thread(target=publish, args=(kafka, digit_stream[:1200], 40.0))
    producer.start()
    publishing = {"enabled": True, "url": str(tmp / "published"), "every_seconds": 5.0,
                  "gate": {"min_retention_ratio": 0.0}}  # fmt: skip  # the publishing row
    config = daemon_config(tmp, broker.bootstrap, topic, publish=publishing,
                           evaluation={"eval_every": 48, "probe_fraction": 0.1})  # fmt: skip
    port = free_port()
    with ThreadedDaemon(config) as daemon:
        wait_until(lambda: daemon.metrics_port is not None, 60, "the metrics server")
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "streamer", "static_configs": [
                {"targets": [f"127.0.0.1:{daemon.metrics_port}"]}]}],
        }))  # fmt: skip
        started = time.time()
        server = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             f"--web.console.templates={DEPLOY / 'prometheus' / 'consoles'}",
             f"--web.console.libraries={DEPLOY / 'prometheus' / 'console_libraries'}"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("wb"),
        )  # fmt: skip
        try:
            rate = "sum(rate(streamer_records_trained_total[5s]))"
            wait_until(lambda: (_value(port, rate) or 0) > 0, 90, "a trained-sample rate")
            yield Scraped(port, started)
        finally:
            server.terminate()
            server.wait(timeout=30)
    producer.join(timeout=60)


def test_prometheus_scrapes_trained_sample_rates_and_quality_gauges(scraped):
    port = scraped.port
    wait_until(lambda: _query(port, "streamer_quality_window_accuracy_ratio"), 60,
               "quality gauges")  # fmt: skip
    assert _value(port, 'up{job="streamer"}') == 1.0
    gauges = ("streamer_quality_matched_cosine_ratio", "streamer_quality_modality_gap",
              "streamer_quality_accuracy_auc_ratio", "streamer_train_loss")  # fmt: skip
    for gauge in gauges:
        assert _value(port, gauge) is not None, gauge
    recorded = "streamer:records_trained:rate5m"
    wait_until(lambda: _query(port, recorded), 30, "the recording rule")


def _panels_without_data(port: int) -> list[str]:
    return [
        f"{panel['title']}: {target['expr']}"
        for _, panel in dashboard.panels() if panel["title"] not in dashboard.MAY_BE_EMPTY
        for target in panel["targets"]
        if not _query(port, dashboard.promql(target["expr"], VALUES))
    ]  # fmt: skip


def test_every_dashboard_query_returns_series_from_the_live_daemon(scraped):
    missing: list[str] = []

    def all_answered() -> bool:
        missing[:] = _panels_without_data(scraped.port)
        return not missing

    try:  # the first evaluation and checkpoint take a few seconds to appear
        wait_until(all_answered, 60, "every panel's query")
    except AssertionError:
        pytest.fail("panels without data (or list them in MAY_BE_EMPTY with the reason):\n"
                    + "\n".join(missing))  # fmt: skip


# Per graph on the console page: its title, whether it is drawn, and its non-null points.
GRAPHS = """PromConsole._graph_registry.map(g => ({
  title: g.params.node.parentNode.querySelector("h4").textContent,
  drawn: g.rickshawGraph !== null && g.graphTd.querySelectorAll("svg path").length > 0,
  error: (g.graphTd.querySelector(".prom_graph_error") || {}).textContent || null,
  points: g.rickshawGraph ? g.rickshawGraph.series.reduce(
    (n, s) => n + s.data.filter(p => p.y !== null).length, 0) : 0}))"""
SETTLED = """document.readyState === "complete" && PromConsole._graph_registry.length > 0 &&
  PromConsole._graph_registry.every(
    g => g.rickshawGraph !== null || g.graphTd.querySelector(".prom_graph_error"))"""
STATS = """Array.from(document.querySelectorAll("td.streamer_stat"), td =>
  [td.previousElementSibling.textContent, td.textContent.trim()])"""


@pytest.mark.skipif(chromium.executable() is None, reason="apt-get install chromium")
def test_the_console_page_draws_every_graph_with_data_in_chromium(scraped, tmp_path):
    wait_until(lambda: not _panels_without_data(scraped.port), 60, "every panel's query")
    time.sleep(max(0.0, scraped.started + 20 - time.time()))  # lines worth looking at
    # The time range covers the whole run, so every graph has its training-time points.
    span = {"duration": int(time.time() - scraped.started) + 2, "endTime": 0}
    url = (f"http://127.0.0.1:{scraped.port}/consoles/streamer.html?rate={RATE}"
           f"#pctc{urllib.parse.quote(json.dumps(span))}")  # fmt: skip
    with urllib.request.urlopen(url, timeout=10) as response:  # the template expands cleanly
        assert response.status == 200
    artefacts = Path(os.environ.get("STREAMER_TEST_ARTIFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    with chromium.Chromium() as browser:
        browser.open(url)
        browser.wait_for(SETTLED, 60)
        graphs, stats = browser.evaluate(GRAPHS), browser.evaluate(STATS)
        shot = browser.screenshot(artefacts / "streamer-console.png")
        print(f"console screenshot: {shot}")
        errors = list(browser.errors)
    assert not errors, errors
    panels = [p for _, p in dashboard.panels()]
    assert [g["title"] for g in graphs] == [p["title"] for p in panels if p["type"] != "stat"]
    assert [s[0] for s in stats] == [p["title"] for p in panels if p["type"] == "stat"]
    may_be_empty = dashboard.MAY_BE_EMPTY
    assert [g for g in graphs if not (g["drawn"] and g["points"])
            and g["title"] not in may_be_empty] == []  # fmt: skip
    assert [s for s in stats if s[1] == "-" and s[0] not in may_be_empty] == []
