"""Rollback: an earlier checkpoint's learning, the newest one's accounting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from streamer.cli import main
from streamer.config import CheckpointConfig, GateConfig
from streamer.intake.source import MemorySource
from streamer.learning.replay_state import unpack
from streamer.state.checkpoint import Checkpointer, complete_checkpoints, load_latest, read
from streamer.state.lock import DirectoryLock, is_locked
from streamer.state.rollback import rollback
from streamer.state.store import VersionStore

from .test_daemon import Run, _all, _records, _settings


def _run(tmp_path, samples, on_step=None, **sections):
    records = _records(samples)
    source = MemorySource(records, lambda raw: None)
    run = Run(_settings(tmp_path, **sections), source, on_step=on_step)
    source._decode = run.daemon.engine.decoder.decode
    run.until(_all(len(records)))
    assert run.code == 0 and run.error is None
    return run, source


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rollback_keeps_offsets_and_counts_and_makes_the_named_model_current(
    tmp_path, digit_stream, capsys
):
    samples = digit_stream[:160]
    run, _ = _run(tmp_path, samples, checkpoint={"keep": 50})
    directory = tmp_path / "ckpt"
    before = load_latest(directory)
    named = read(complete_checkpoints(directory)[1])
    assert not _equal(named.weights, before.weights)
    code = main(["rollback", "--checkpoint-dir", str(directory), "--to", named.id])
    assert code == 0 and named.id in capsys.readouterr().out
    after = load_latest(directory)
    assert after.id != before.id
    for key in ("offsets", "counts", "digest", "lineage", "step"):
        assert after.meta[key] == before.meta[key], key
    assert _equal(after.weights, named.weights)
    assert after.meta["rollback"]["to"] == named.id and after.meta["rollback"]["from"] == before.id
    assert after.meta["rollback"]["unlearned"] == (
        before.meta["counts"]["trained"] - named.meta["counts"]["trained"]
    )
    assert after.meta["quality"] == named.meta["quality"]
    # a restart resumes from it: the named model, the newest accounting, nothing retrained
    again, _ = _run(tmp_path, samples, checkpoint={"keep": 50})
    daemon = again.daemon
    assert _equal(daemon.engine.model.trainable_state(), named.weights)
    assert daemon.ledger.counts == run.daemon.ledger.counts
    assert daemon.ledger.offsets == run.daemon.ledger.offsets
    replay, named_replay = daemon.engine.replay.state_dict(), named.state["ranks"][0]["replay"]
    assert [s["id"] for s in unpack(replay)[0]] == [s["id"] for s in unpack(named_replay)[0]]
    assert replay["seen"] == named_replay["seen"]
    assert daemon.engine.evaluator.samples == named.state["ranks"][0]["evaluator"]["samples"]


def test_rolling_back_to_a_missing_checkpoint_says_so_and_writes_nothing(tmp_path, digit_stream):
    _run(tmp_path, digit_stream[:48])
    directory = tmp_path / "ckpt"
    before = complete_checkpoints(directory)
    assert main(["rollback", "--checkpoint-dir", str(directory), "--to", "ckpt-99999999"]) == 3
    assert complete_checkpoints(directory) == before


def test_export_command_writes_a_merged_file_and_manifest(tmp_path, digit_stream):
    _run(tmp_path, digit_stream[:48])
    out = tmp_path / "export"
    args = ["export", "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(out)]
    assert main([*args, "--format", "merged", "--blend", "0.5"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["blend"] == 0.5 and "open_clip_model.safetensors" in manifest["files"]
    assert main([*args, "--format", "adapters"]) == 4  # the folder is not empty: refused
    assert json.loads((out / "manifest.json").read_text()) == manifest
    with pytest.raises(SystemExit):
        main([*args, "--blend", "2"])


def test_auto_rollback_after_refusals_in_a_row_restores_the_last_published_model(
    tmp_path, digit_stream
):
    """The gate passes until a version is out, then refuses everything (as if the stream
    went bad): after two refusals the daemon rolls back to that version and goes on."""

    def harden(outcome, daemon) -> None:
        publisher = daemon.publisher
        if publisher.published is not None and publisher.cfg.gate.min_retention_ratio == 0:
            publisher.cfg = publisher.cfg.model_copy(
                update={"gate": GateConfig(require_reference=True)})  # fmt: skip

    url = str(tmp_path / "pub")
    publish = {"enabled": True, "url": url, "every_steps": 1, "every_seconds": 0.05,
               "gate": {"min_retention_ratio": 0.0},
               "auto_rollback": {"enabled": True, "after_failures": 2}}  # fmt: skip
    records = _records(digit_stream[:600])
    source = MemorySource(records, lambda raw: None)
    settings = _settings(tmp_path, publish=publish, checkpoint={"keep": 3, "every_steps": 1})
    run = Run(settings, source, on_step=harden)
    source._decode = run.daemon.engine.decoder.decode
    registry = run.daemon.metrics.registry

    def rolled_back(daemon) -> bool:
        return (registry.get_sample_value("streamer_rollbacks_total") or 0) >= 1 or (
            daemon.ledger.accounted >= len(records))  # fmt: skip

    run.until(rolled_back, timeout=120)
    assert run.code == 0 and registry.get_sample_value("streamer_rollbacks_total") >= 1
    target = VersionStore(url).latest()["manifest"]["checkpoint"]
    assert (tmp_path / "ckpt" / target).exists()  # kept: keep_published
    metas = [json.loads((p / "meta.json").read_text()) for p in
             complete_checkpoints(tmp_path / "ckpt")]  # fmt: skip
    rolled = [m for m in metas if m.get("rollback")]
    assert rolled and rolled[0]["rollback"]["to"] == target
    assert rolled[0]["rollback"]["reason"].startswith("auto")
    ledger = run.daemon.ledger
    assert ledger.counts["trained"] + ledger.counts["probes"] == sum(
        1 for r in records if r.offset < ledger.offsets.get((r.topic, r.partition), 0)
    )


# -- a safe rollback: the daemon's lock, and the target kept -------------------------------
def test_an_offline_rollback_refuses_while_the_daemon_runs_and_works_once_it_stopped(
    tmp_path, digit_stream, capsys
):
    directory, tries = tmp_path / "ckpt", []

    def try_rollback(outcome, daemon) -> None:  # on the daemon's thread, the lock held
        ids = [p.name for p in complete_checkpoints(directory)]
        if len(ids) >= 2 and not tries:
            tries.append((main(["rollback", "--checkpoint-dir", str(directory), "--to", ids[0]]),
                          capsys.readouterr().err, ids[0]))  # fmt: skip

    _run(tmp_path, digit_stream[:160], on_step=try_rollback, checkpoint={"keep": 50})
    code, err, target = tries[0]
    assert code == 4 and "in use by a running daemon" in err and "--force" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not [m for m in _metas(directory) if m.get("rollback")]  # nothing written
    assert main(["rollback", "--checkpoint-dir", str(directory), "--to", target]) == 0


def _metas(directory) -> list[dict]:
    return [json.loads((p / "meta.json").read_text()) for p in complete_checkpoints(directory)]


HOLDER = """
import sys, time
from streamer.state.lock import DirectoryLock
DirectoryLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_the_lock_dies_with_a_killed_daemon_and_force_overrides_a_held_one(
    tmp_path, digit_stream, capsys
):
    _run(tmp_path, digit_stream[:48], checkpoint={"keep": 50})
    directory = tmp_path / "ckpt"
    first = complete_checkpoints(directory)[0].name
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(directory)
        back = ["rollback", "--checkpoint-dir", str(directory), "--to", first]
        assert main(back) == 4 and f"pid {holder.pid}" in capsys.readouterr().err
        assert main([*back, "--force"]) == 0  # the operator's call: see docs/operations.md
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the flock
        holder.wait()
    assert not is_locked(directory)
    with DirectoryLock(directory):  # a restarted daemon takes it at once
        assert is_locked(directory)


def test_the_rollback_target_is_kept_while_a_kept_checkpoint_names_it(tmp_path, digit_stream):
    _run(tmp_path, digit_stream[:96], checkpoint={"keep": 3, "keep_published": False})
    directory = tmp_path / "ckpt"
    oldest_kept = complete_checkpoints(directory)[0].name
    written = rollback(directory, oldest_kept)  # a 4th checkpoint: the window moves past it
    assert (directory / oldest_kept).exists()
    checkpoints = Checkpointer(CheckpointConfig(dir=directory, keep=3, keep_published=False))
    rolled = read(directory / written)
    for _ in range(2):  # the rollback checkpoint still among the last 3: its target stays
        checkpoints.save(rolled.weights, rolled.state, {"step": rolled.meta["step"]})
        assert (directory / oldest_kept).exists()
    checkpoints.save(rolled.weights, rolled.state, {"step": rolled.meta["step"]})
    assert not (directory / written).exists() and not (directory / oldest_kept).exists()
