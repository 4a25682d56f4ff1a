"""Gated publishing and auto-rollback against the real broker, read as a serving stack would."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import threading
from pathlib import Path

import pytest

from streamer.config import GateConfig, KafkaConfig, StreamConfig
from streamer.dev import datasets
from streamer.dev.produce import publish
from streamer.state import gate
from streamer.state.checkpoint import complete_checkpoints
from streamer.state.store import VersionStore

from .conftest import ThreadedDaemon, accounted, daemon_config, new_topic, wait_until

pytestmark = pytest.mark.slow


class Reader(threading.Thread):
    """Polls latest.json as a server would, and reads every file the pointer names."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.store, self.done = VersionStore(url), threading.Event()
        self.pointers: dict[str, dict] = {}  # version -> manifest, every one seen
        self.problems: list[str] = []
        self.reads = 0

    def run(self) -> None:
        while not self.done.is_set():
            pointer = self.store.latest()
            if pointer is None:
                continue
            self.reads += 1
            self.pointers[pointer["version"]] = pointer["manifest"]
            for name, digest in pointer["manifest"]["files"].items():
                try:
                    data = self.store.read(pointer["version"], name)
                except FileNotFoundError:
                    self.problems.append(f"{pointer['version']}/{name} missing")
                    continue
                if hashlib.sha256(data).hexdigest() != digest:
                    self.problems.append(f"{pointer['version']}/{name} partial")

    def __enter__(self) -> Reader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(30)


def _kafka(broker, topic: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)


@pytest.mark.parametrize("where", ["dir", "memory"])
def test_a_run_publishes_gated_versions_that_a_polling_reader_always_finds_whole(
    broker, tmp_path, digit_stream, where
):
    topic, samples = new_topic(), digit_stream[:480]
    publish(_kafka(broker, topic), samples, partitions=2)
    url = str(tmp_path / "published") if where == "dir" else f"memory://published-{topic}"
    config = daemon_config(tmp_path, broker.bootstrap, topic, publish={
        "enabled": True, "url": url, "every_steps": 3, "every_seconds": 0.5,
        "gate": {"min_retention_ratio": 0.0}})  # fmt: skip
    with Reader(url) as reader, ThreadedDaemon(config) as daemon:
        wait_until(lambda: accounted(daemon) >= len(samples), 180, "all records")
        wait_until(lambda: len(VersionStore(url).versions()) >= 2, 60, "two versions")
    store = VersionStore(url)
    assert not reader.problems, reader.problems
    assert reader.reads > 0 and len(reader.pointers) >= 1
    latest = store.latest()
    assert latest["version"] == store.versions()[-1]
    manifest = latest["manifest"]
    assert manifest["format"] == "merged" and manifest["arch"] == "streamer-tiny"
    assert (Path(config["checkpoint"]["dir"]) / manifest["checkpoint"]).is_dir()  # kept
    registry = daemon.metrics.registry
    assert registry.get_sample_value("streamer_publish_version") == int(latest["version"][1:])
    assert registry.get_sample_value("streamer_publish_last_timestamp_seconds") > 0


def _poisoned(samples: list, seed: int = 0) -> list:
    """The same images again as new records, their labels shuffled: a bad producer."""
    labels = [s.label for s in samples]
    random.Random(seed).shuffle(labels)
    return [dataclasses.replace(s, id=f"{s.id}-poisoned", label=label,
                                text=f"a photo of a {label}.")
            for s, label in zip(samples, labels, strict=True)]  # fmt: skip


def test_a_poisoned_stretch_is_refused_never_published_and_rolled_back(broker, tmp_path):
    """Five digit classes learned cleanly (accuracy on held-out probes ~0.5-0.75 in the
    first 900 records), then the same images with shuffled labels (accuracy falls to
    ~0.3): the gate's floor of 0.45 refuses, two refusals in a row roll the model back."""
    clean = [s for s in datasets.stream(StreamConfig(dataset="digits", tasks=2, seed=0))
             if s.task == "task-0"]  # fmt: skip
    samples = clean + _poisoned(clean)
    topic = new_topic()
    publish(_kafka(broker, topic), samples, partitions=1)  # in order: clean, then poisoned
    url = str(tmp_path / "published")
    gate_cfg = {"min_retention_ratio": 0.0, "min_window_accuracy": 0.45}
    config = daemon_config(
        tmp_path, broker.bootstrap, topic,
        learner={"lr": 2e-3, "steps_per_batch": 3},
        evaluation={"probe_fraction": 0.25, "probe_per_window": 200, "min_probes": 16,
                    "eval_every": 96},
        checkpoint={"every_steps": 4, "every_seconds": 60},
        publish={"enabled": True, "url": url, "every_steps": 2, "every_seconds": 0.3,
                 "gate": gate_cfg, "auto_rollback": {"enabled": True, "after_failures": 2}},
    )  # fmt: skip
    with Reader(url) as reader, ThreadedDaemon(config) as daemon:
        wait_until(lambda: accounted(daemon) >= len(samples), 300, "all records")
        registry = daemon.metrics.registry
        wait_until(lambda: registry.get_sample_value("streamer_rollbacks_total") >= 1, 60,
                   "an automatic rollback")  # fmt: skip
    refused = registry.get_sample_value("streamer_publish_gate_failures_total",
                                        {"reason": "window_accuracy"})  # fmt: skip
    assert refused >= 2
    # nothing that fails the gate was ever visible: every pointer the reader saw passes it
    assert reader.pointers and not reader.problems
    for version, manifest in reader.pointers.items():
        assert gate.judge(manifest["quality"], GateConfig(**gate_cfg), None).passed, version
    metas = [json.loads((p / "meta.json").read_text())
             for p in complete_checkpoints(Path(config["checkpoint"]["dir"]))]  # fmt: skip
    rolled = [m for m in metas if m.get("rollback")]
    published = {m["checkpoint"] for m in reader.pointers.values()}
    assert rolled and all(m["rollback"]["to"] in published for m in rolled)
    # nothing lost or trained twice across the rollbacks
    assert daemon.ledger.counts["trained"] + daemon.ledger.counts["probes"] == len(samples)
