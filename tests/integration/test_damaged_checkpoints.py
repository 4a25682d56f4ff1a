"""kill -9, then the newest checkpoint damaged: the restart falls back and loses nothing."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from streamer.config import KafkaConfig
from streamer.dev.broker import free_port
from streamer.dev.produce import publish
from streamer.state.checkpoint import DAMAGED, complete_checkpoints

from .conftest import (
    committed_offsets,
    daemon_config,
    expected_digest,
    new_topic,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def spawn():
    """start_process, and a kill at teardown of any the test left running (a failure)."""
    started = []

    def start(*args):
        started.append(start_process(*args))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _truncate_weights(path: Path) -> None:
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def _garble_meta(path: Path) -> None:
    meta = path / "meta.json"
    meta.write_text(meta.read_text()[:-40] + "}{ not json")


def _latest_meta(config: dict) -> dict | None:
    paths = complete_checkpoints(Path(config["checkpoint"]["dir"]))
    try:
        return json.loads((paths[-1] / "meta.json").read_text()) if paths else None
    except ValueError:  # the damaged one, before the restart sets it aside
        return None


def _counted(config: dict) -> int:
    meta = _latest_meta(config)
    counts = meta["counts"] if meta else {}
    return sum(counts.get(k, 0) for k in ("trained", "probes", "dead_lettered"))


def _unreadable_metric(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("streamer_checkpoint_unreadable_total "):
                return float(line.split()[1])
    raise AssertionError("streamer_checkpoint_unreadable_total not exported")


@pytest.mark.parametrize("damage", [_truncate_weights, _garble_meta],
                         ids=["truncated-weights", "garbled-meta"])  # fmt: skip
def test_a_damaged_newest_checkpoint_is_set_aside_and_every_record_counted_once(
    broker, tmp_path, digit_stream, spawn, damage: Callable[[Path], None]
):
    topic, samples = new_topic(), digit_stream[:600]
    ends = publish(KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), samples)
    config = daemon_config(
        tmp_path, broker.bootstrap, topic, learner={"batch_size": 8, "steps_per_batch": 3},
        metrics={"port": free_port()}, checkpoint={"keep": 50},  # the damaged one stays
    )  # fmt: skip
    directory, group = Path(config["checkpoint"]["dir"]), config["kafka"]["group_id"]
    first = spawn(config, tmp_path, "first")

    def two_committed() -> bool:  # the group's commit belongs to the newest of two or more
        paths = complete_checkpoints(directory)
        committed = committed_offsets(broker.bootstrap, group, list(ends))[(topic, 0)]
        return len(paths) >= 2 and committed is not None and committed > 0

    wait_until(two_committed, 120, "two checkpoints and a commit")
    first.send_signal(signal.SIGKILL)
    first.wait()
    newest = complete_checkpoints(directory)[-1]
    assert _counted(config) < len(samples), "killed mid-stream"
    damage(newest)
    second = spawn(config, tmp_path, "second")
    wait_until(lambda: _counted(config) >= len(samples), 180, "every record in a checkpoint")
    assert _unreadable_metric(config["metrics"]["port"]) == 1
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    assert newest.with_name(newest.name + DAMAGED).is_dir()  # set aside, kept to look at
    meta = _latest_meta(config)
    assert meta["counts"]["trained"] + meta["counts"]["probes"] == len(samples)  # none twice
    assert int(meta["digest"]) == expected_digest(samples)  # none lost
    assert meta["offsets"] == {f"{t}:{p}": end for (t, p), end in ends.items()}
    assert "checkpoint unreadable" in (tmp_path / "second.log").read_text()
