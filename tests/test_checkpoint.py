"""Atomic checkpoints: complete or absent, newest readable first, the last K kept."""

from __future__ import annotations

import pytest
import torch

from streamer.config import CheckpointConfig
from streamer.state.checkpoint import (
    Checkpointer,
    CheckpointError,
    complete_checkpoints,
    load_latest,
)


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
    assert load_latest(tmp_path).id == "ckpt-00000001"  # a reader renames nothing
    assert (tmp_path / "ckpt-00000002").is_dir()


def test_due_by_steps_or_by_time(tmp_path):
    now = [0.0]
    ckpt = Checkpointer(
        CheckpointConfig(dir=tmp_path, every_steps=10, every_seconds=60), clock=lambda: now[0]
    )
    assert not ckpt.due(5)
    assert ckpt.due(10)
    now[0] = 61.0
    assert ckpt.due(1)


def _damage(path, kind: str) -> None:
    if kind == "truncated weights":
        weights = path / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:20])
    elif kind == "garbled meta":
        (path / "meta.json").write_text('{"id": "ckpt-0000')
    elif kind == "empty state":
        (path / "state.pt").write_bytes(b"")
    elif kind == "missing weights":
        (path / "weights.safetensors").unlink()
    elif kind == "meta of another checkpoint":
        (path / "meta.json").write_text('{"id": "ckpt-00000001", "step": 1}')


@pytest.mark.parametrize(
    "kind",
    ["truncated weights", "garbled meta", "empty state", "missing weights",
     "meta of another checkpoint"],
)  # fmt: skip
def test_any_damage_to_the_newest_is_set_aside_and_the_previous_is_read(tmp_path, kind):
    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path))
    _save(ckpt, 1)
    _save(ckpt, 2)
    _damage(tmp_path / "ckpt-00000002", kind)
    assert ckpt.latest().id == "ckpt-00000001"
    assert ckpt.skipped == 1 and (tmp_path / "ckpt-00000002.damaged").is_dir()
    assert _save(ckpt, 3) == "ckpt-00000003"  # numbers are never reused
    assert ckpt.latest().id == "ckpt-00000003" and ckpt.skipped == 1


def test_pruning_keeps_the_last_k_and_removes_older_damaged_ones(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path, keep=2))
    _save(ckpt, 1)
    _save(ckpt, 2)
    _damage(tmp_path / "ckpt-00000002", "garbled meta")
    assert ckpt.latest().id == "ckpt-00000001"
    for step in (3, 4, 5):
        _save(ckpt, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004", "ckpt-00000005"]


def test_no_usable_checkpoint_among_several_refuses_to_start_from_the_base(tmp_path):
    from streamer.learning.distributed import World
    from streamer.state.snapshot import share_out

    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path))
    _save(ckpt, 1)
    _damage(tmp_path / "ckpt-00000001", "truncated weights")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        share_out(World(), ckpt, lambda restored: None)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):  # and on every restart
        share_out(World(), Checkpointer(CheckpointConfig(dir=tmp_path)), lambda r: None)
    assert share_out(World(), Checkpointer(CheckpointConfig(dir=tmp_path / "new")),
                     lambda r: None) is None  # fmt: skip  # an empty directory: a fresh start


@pytest.mark.parametrize("keep_published", [True, False])
def test_published_checkpoints_are_kept_past_the_last_k_as_rollback_targets(
    tmp_path, keep_published
):
    from streamer.state.checkpoint import PUBLISHED

    ckpt = Checkpointer(CheckpointConfig(dir=tmp_path, keep=2, keep_published=keep_published))
    first = _save(ckpt, 0)
    (tmp_path / first / PUBLISHED).write_text("v000001\n")
    for step in range(1, 5):
        _save(ckpt, step)
    kept = [p.name for p in complete_checkpoints(tmp_path)]
    assert kept == ([first] if keep_published else []) + ["ckpt-00000004", "ckpt-00000005"]
