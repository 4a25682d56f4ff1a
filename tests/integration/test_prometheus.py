"""A real Prometheus server scrapes a training daemon; its HTTP API reads the figures back."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from streamer.config import KafkaConfig
from streamer.dev.broker import free_port
from streamer.dev.produce import publish

from .conftest import ThreadedDaemon, daemon_config, new_topic, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus"),
]
RULES = Path(__file__).parent.parent.parent / "deploy" / "prometheus" / "rules.yml"


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


def test_prometheus_scrapes_trained_sample_rates_and_quality_gauges(broker, tmp_path, digit_stream):
    topic = new_topic()
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
    producer = threading.Thread(target=publish, args=(kafka, digit_stream[:900], 40.0))
    producer.start()  # 40 records/s for ~20 s: training goes on while Prometheus scrapes
    config = daemon_config(tmp_path, broker.bootstrap, topic,
                           evaluation={"eval_every": 48, "probe_fraction": 0.1})  # fmt: skip
    prom_port = free_port()
    with ThreadedDaemon(config) as daemon:
        wait_until(lambda: hasattr(daemon, "metrics_port"), 60, "the metrics server")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "streamer", "static_configs": [
                {"targets": [f"127.0.0.1:{daemon.metrics_port}"]}]}],
        }))  # fmt: skip
        server = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
        )  # fmt: skip
        try:
            rate = "sum(rate(streamer_records_trained_total[5s]))"
            wait_until(lambda: (_value(prom_port, rate) or 0) > 0, 90, "a trained-sample rate")
            wait_until(lambda: _query(prom_port, "streamer_quality_window_accuracy_ratio"), 60,
                       "quality gauges")  # fmt: skip
            assert _value(prom_port, 'up{job="streamer"}') == 1.0
            gauges = ("streamer_quality_matched_cosine_ratio", "streamer_quality_modality_gap",
                      "streamer_quality_accuracy_auc_ratio", "streamer_train_loss")  # fmt: skip
            for gauge in gauges:
                assert _value(prom_port, gauge) is not None, gauge
            recorded = "streamer:records_trained:rate5m"
            wait_until(lambda: _query(prom_port, recorded), 30, "the recording rule")
        finally:
            server.terminate()
            server.wait(timeout=30)
    producer.join(timeout=60)
