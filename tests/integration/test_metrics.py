"""The metrics a live daemon serves: valid exposition, health and readiness."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request

import pytest

from streamer.config import KafkaConfig
from streamer.dev.produce import publish

from ..test_monitoring import UNPLOTTED, dashboard_metric_names, rule_metric_names
from .conftest import ThreadedDaemon, accounted, daemon_config, new_topic, wait_until

pytestmark = pytest.mark.slow


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_a_live_scrape_passes_promtool_and_health_endpoints_answer(broker, tmp_path, digit_stream):
    topic, samples = new_topic(), digit_stream[:200]
    publish(KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), samples)
    publishing = {"enabled": True, "url": str(tmp_path / "published"),
                  "gate": {"min_retention_ratio": 0.0}}  # fmt: skip  # its families too
    config = daemon_config(tmp_path, broker.bootstrap, topic, publish=publishing)
    with ThreadedDaemon(config) as daemon:
        wait_until(lambda: accounted(daemon) >= len(samples), 120, "all records")
        wait_until(lambda: daemon.persistence.last is not None, 30, "a checkpoint")
        port = daemon.metrics_port
        status, text = _get(port, "/metrics")
        assert _get(port, "/healthz")[0] == 200 and _get(port, "/readyz")[0] == 200
    assert status == 200
    check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True)  # fmt: skip
    assert check.returncode == 0 and check.stdout.strip() == "", check.stdout + check.stderr
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    families = exported | {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in exported}
    used = rule_metric_names() | dashboard_metric_names()
    assert used <= families, used - families  # nothing plotted or alerted on is missing
    plotted = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in used}
    shown = plotted | set(UNPLOTTED) | {n.removesuffix("_total") for n in plotted}
    exported_families = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in exported}
    assert exported_families <= shown | {n + "_total" for n in shown}, exported_families - shown
    for expected in (
        "streamer_records_trained_total", "streamer_train_step_duration_seconds_bucket",
        'streamer_state{streamer_state="running"} 1.0', "streamer_quality_window_accuracy_ratio",
        "streamer_checkpoint_last_success_timestamp_seconds", "streamer_build_info",
        f'streamer_kafka_partition_lag_records{{partition="0",topic="{topic}"}}',
        "process_resident_memory_bytes", "python_gc_collections_total",
    ):  # fmt: skip
        assert expected in text
