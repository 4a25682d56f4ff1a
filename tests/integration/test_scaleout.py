"""Scale-out: `streamer run` under torchrun (gloo, 2 ranks) against the real broker.

One model on two ranks: each rank owns half the partitions, both apply the same updates, one
checkpoint holds both, and a killed rank restarts the job from it without losing or
double-counting a record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from streamer.config import KafkaConfig
from streamer.dev.produce import publish
from streamer.state.checkpoint import complete_checkpoints
from streamer.state.snapshot import fingerprint

from .conftest import committed_offsets, daemon_config, expected_digest, new_topic, wait_until

pytestmark = pytest.mark.slow
PARTITIONS = 4


def start_torchrun(config: dict, tmp_path: Path, ranks: int, restarts: int) -> subprocess.Popen:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "torchrun.log", "ab")  # noqa: SIM115
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", f"--max-restarts={restarts}",
               "-m", "streamer", "run", "--config", str(path)]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def latest_meta(config: dict) -> dict:
    paths = complete_checkpoints(Path(config["checkpoint"]["dir"]))
    return json.loads((paths[-1] / "meta.json").read_text()) if paths else {}


def trained(config: dict) -> int:
    return latest_meta(config).get("counts", {}).get("trained", 0)


def stop(job: subprocess.Popen, log: Path) -> str:
    """SIGTERM to torchrun, as Kubernetes sends it: it passes the signal on, every rank
    drains together (torchrun itself then exits non-zero: it reports the signal)."""
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=120)
    text = log.read_text()
    assert '"level": "error"' not in text, text[-3000:]
    return text


def scaleout_config(tmp_path: Path, broker, topic: str, gather=False, **checkpoint) -> dict:
    return daemon_config(
        tmp_path, broker.bootstrap, topic,
        evaluation={"probe_fraction": 0.0, "eval_every": 64, "probe_per_window": 16,
                    "min_probes": 8},
        learner={"batch_size": 8, "replay_per_step": 8, "steps_per_batch": 2},
        distributed={"backend": "gloo", "gather_features": gather},
        model={"arch": "streamer-tiny", "peft": {"mode": "full" if gather else "lora"}},
        checkpoint={"every_steps": 5, "every_seconds": 1.0, **checkpoint},
    )  # fmt: skip


def test_two_ranks_train_every_record_once_with_identical_weights(broker, tmp_path, digit_stream):
    topic, samples = new_topic(), digit_stream[:240]
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
    ends = publish(kafka, samples, partitions=PARTITIONS)
    config = scaleout_config(tmp_path, broker, topic, gather=True)  # SIT over both, full tuning
    job = start_torchrun(config, tmp_path, ranks=2, restarts=0)
    try:
        wait_until(lambda: trained(config) >= len(samples), 180, "all records checkpointed")
    finally:
        log = stop(job, tmp_path / "torchrun.log")
    assert log.count('"event": "stopping"') == 2  # both ranks drained on the signal
    meta = latest_meta(config)
    assert meta["world_size"] == 2
    assert meta["counts"]["trained"] == len(samples)
    assert int(meta["digest"]) == expected_digest(samples)  # each id exactly once
    assert meta["offsets"] == {f"{t}:{p}": end for (t, p), end in ends.items()}
    ranks = meta["ranks"]
    assert all(r["counts"]["trained"] > 0 for r in ranks)  # both ranks had data
    owned = [set(r["offsets"]) for r in ranks]
    assert owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == PARTITIONS
    # Bit-identical replicas: each rank hashed its own weights; both equal the saved ones.
    saved = load_file(str(complete_checkpoints(Path(config["checkpoint"]["dir"]))[-1]
                          / "weights.safetensors"))  # fmt: skip
    assert ranks[0]["weights"] == ranks[1]["weights"] == fingerprint(saved)
    group = config["kafka"]["group_id"]
    assert committed_offsets(broker.bootstrap, group, list(ends)) == ends


def test_a_killed_rank_restarts_the_job_from_the_checkpoint_and_counts_stay_exact(
    broker, tmp_path, digit_stream
):
    topic, samples = new_topic(), digit_stream[:400]
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
    publish(kafka, samples[:40], partitions=PARTITIONS)
    ends: dict = {}
    rest = threading.Thread(target=lambda: ends.update(publish(kafka, samples[40:], rate=60)))
    config = scaleout_config(tmp_path, broker, topic, every_steps=4, every_seconds=30.0)
    job = start_torchrun(config, tmp_path, ranks=2, restarts=1)
    try:
        wait_until(lambda: trained(config) > 0, 180, "a first checkpoint")
        rest.start()  # the stream goes on while a rank dies
        time.sleep(1.5)  # steps past the checkpoint: progress a restart must redo exactly once
        workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True)
        victim = int(workers.stdout.split()[-1])
        at_kill = trained(config)
        os.kill(victim, signal.SIGKILL)
        rest.join()
        wait_until(lambda: trained(config) >= len(samples), 240, "all records after the restart")
    finally:
        log = stop(job, tmp_path / "torchrun.log")
    assert at_kill < len(samples)  # the kill came mid-run
    assert log.count('"event": "restored"') == 2  # both ranks of the restarted job resumed
    meta = latest_meta(config)
    assert meta["counts"]["trained"] == len(samples)
    assert int(meta["digest"]) == expected_digest(samples)
    assert meta["offsets"] == {f"{t}:{p}": end for (t, p), end in ends.items()}
    assert meta["ranks"][0]["weights"] == meta["ranks"][1]["weights"]
