"""Integration fixtures: the real embedded broker (Tansu), daemons in threads or processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from streamer.config import Settings
from streamer.dev.broker import EmbeddedBroker
from streamer.records import Sample, id_hash
from streamer.service.daemon import Daemon


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is `integration` (make test-fast skips it)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


FAST_GROUP = {"max_poll_interval_ms": 5000, "session_timeout_ms": 6000,
              "heartbeat_interval_ms": 500}  # fmt: skip  # small, or a group join takes minutes


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as embedded:
        yield embedded


def daemon_config(tmp_path: Path, bootstrap: str, topic: str, **sections: dict) -> dict[str, Any]:
    config: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": [bootstrap], "topic": topic, "group_id": f"g-{topic}",
                  "linger_ms": 100, **FAST_GROUP},
        "model": {"arch": "streamer-tiny"},
        "learner": {"batch_size": 16, "replay_per_step": 8, "steps_per_batch": 2},
        "replay": {"capacity": 100},
        "evaluation": {"probe_fraction": 0.1, "eval_every": 64, "probe_per_window": 16,
                       "min_probes": 8},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every_steps": 5, "every_seconds": 1.0},
        "daemon": {"grace_seconds": 30, "retry_backoff_seconds": 0.2},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }  # fmt: skip
    for name, fields in sections.items():
        config.setdefault(name, {}).update(fields)
    return config


def new_topic() -> str:
    return f"pairs-{uuid.uuid4().hex[:8]}"


def expected_digest(samples: list[Sample]) -> int:
    return sum(id_hash(s.id) for s in samples) % 2**64


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def accounted(daemon: Daemon) -> int:
    return daemon.ledger.accounted


class ThreadedDaemon:
    """A daemon on a background thread (signal handlers are only for the main thread)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.daemon = Daemon(Settings.model_validate(config))
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.daemon.run()

    def __enter__(self) -> Daemon:
        self._thread.start()
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop.set()
        self._thread.join(timeout=60)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def start_process(config: dict[str, Any], tmp_path: Path, name: str) -> subprocess.Popen:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", "--config", str(path)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def committed_offsets(bootstrap: str, group: str, partitions: list[tuple[str, int]]) -> dict:
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=group,
                             enable_auto_commit=False)  # fmt: skip
    try:
        return {p: consumer.committed(TopicPartition(*p)) for p in partitions}
    finally:
        consumer.close(autocommit=False)
