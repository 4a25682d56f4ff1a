"""Rollback: an earlier checkpoint's learning, the newest one's accounting."""

from __future__ import annotations

import json

import pytest
import torch

from streamer.cli import main
from streamer.config import GateConfig
from streamer.intake.source import MemorySource
from streamer.state.checkpoint import complete_checkpoints, load_latest, read
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
    assert [s["id"] for s in replay["items"]] == [s["id"] for s in named_replay["items"]]
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
