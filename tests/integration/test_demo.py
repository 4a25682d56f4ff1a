"""`streamer demo` end to end (the README's first command), on a small stream."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from streamer.cli import main


@pytest.mark.slow
def test_demo_streams_through_the_embedded_broker_and_compares_with_plain_finetuning(
    tmp_path, capsys
):
    config = tmp_path / "demo.yaml"
    config.write_text(
        "model: {arch: streamer-tiny}\n"
        "learner: {batch_size: 16, steps_per_batch: 1, replay_per_step: 8}\n"
        "evaluation: {probe_fraction: 0.1, eval_every: 64, min_probes: 4}\n"
        "stream: {dataset: digits, tasks: 3, per_class: 20}\n"
        "kafka: {topic: demo-test, max_poll_interval_ms: 5000, session_timeout_ms: 6000,"
        " heartbeat_interval_ms: 500}\n"
    )
    out = tmp_path / "out"
    assert main(["demo", "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "A_last" in printed and "probe acc" in printed
    # the recipe and plain fine-tuning on the same stream, side by side
    table = printed[printed.index("new-data accuracy") - 400 :]
    assert "streamer" in table and "fine-tuning" in table and "average forgetting" in table
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final"]["accuracy"]) == {"task-0", "task-1", "task-2"}
    runs = summary["comparison"]
    assert set(runs) == {"streamer", "fine-tuning"}
    assert all(0 <= r["new_accuracy"] <= 1 and 0 < r["chance"] < 1 for r in runs.values())
    assert Image.open(out / "accuracy.png").size[0] > 500
    assert (out / "checkpoints").is_dir()
