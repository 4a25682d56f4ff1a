"""Atomic checkpoints: complete or absent, newest readable first, the last K kept."""

from __future__ import annotations

import torch

from streamer.checkpoint import Checkpointer, complete_checkpoints, load_latest
from streamer.config import CheckpointConfig


def _save(ckpt: Checkpointer, step: int) -> str:
    weights = {"w": torch.full((2, 2), float(step))}
    state = {"step": step, "blob": b"\x00\x01", "nested": {"a": [1, 2.5, "x"]}}
    return ckpt.save(weights, state, {"step": step})


def test_round_trip_without_pickled_objects(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path))
    ckpt_id = _save(ckpt, 3)
    loaded = ckpt.latest()
    assert loaded.id == ckpt_id == "ckpt-00000001"
    assert torch.equal(loaded.weights["w"], torch.full((2, 2), 3.0))
    assert loaded.state == {"step": 3, "blob": b"\x00\x01", "nested": {"a": [1, 2.5, "x"]}}
    assert loaded.meta["step"] == 3


def test_only_the_last_k_are_kept(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path, keep=2))
    for step in range(5):
        _save(ckpt, step)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["ckpt-00000004", "ckpt-00000005"]


def test_a_partial_write_is_never_loaded_and_is_cleaned_by_the_writer(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path))
    _save(ckpt, 1)
    partial = tmp_path / ".tmp-ckpt-00000002"
    partial.mkdir()
    (partial / "weights.safetensors").write_bytes(b"half")
    assert load_latest(tmp_path).id == "ckpt-00000001"
    assert partial.exists()  # readers never delete
    ckpt.discard_partial()
    assert not partial.exists()


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path))
    _save(ckpt, 1)
    _save(ckpt, 2)
    (tmp_path / "ckpt-00000002" / "state.pt").write_bytes(b"corrupted")
    assert load_latest(tmp_path).id == "ckpt-00000001"


def test_due_by_steps_or_by_time(tmp_path):
    now = [0.0]
    ckpt = Checkpointer(
        CheckpointConfig(dir=tmp_path, every_steps=10, every_seconds=60), clock=lambda: now[0]
    )
    assert not ckpt.due(5)
    assert ckpt.due(10)
    now[0] = 61.0
    assert ckpt.due(1)
