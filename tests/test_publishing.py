"""Quality in checkpoints, the export, the gate, the version store and the publisher."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from pathlib import Path

import open_clip
import pytest
import torch
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from streamer.config import GateConfig, PublishConfig
from streamer.intake.source import MemorySource
from streamer.learning.peft import merged_state_dict
from streamer.state import gate
from streamer.state.checkpoint import PUBLISHED, complete_checkpoints, load_latest, read
from streamer.state.export import MANIFEST, export, load_merged, model_for, sha256
from streamer.state.publisher import Publisher, PublishMetrics
from streamer.state.store import VersionStore

from .test_daemon import Run, _all, _records, _settings


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digit_stream):
    """A daemon run over 200 digits with checkpoints every 2 steps: (its daemon, ckpt dir)."""
    tmp = tmp_path_factory.mktemp("run")
    records = _records(digit_stream[:200])
    settings = _settings(tmp, checkpoint={"keep": 50}, evaluation={"min_probes": 4})
    source = MemorySource(records, lambda raw: None)
    run = Run(settings, source)
    source._decode = run.daemon.engine.decoder.decode
    run.until(_all(len(records)))
    assert run.code == 0
    return run.daemon, tmp / "ckpt"


def _quality(**changes) -> dict:
    q = {"step": 10, "samples": 100, "reference": {"accuracy": 0.5, "base": 0.6,
         "retention": -0.1}, "a_last": 0.5, "windows": {"task-0": 0.4, "task-1": 0.7},
         "latest_windows": ["task-0", "task-1"],
         "misalignment": {"misaligned": False, "deficit": 0.0, "recent": [0.0],
                          "threshold": 0.15}, "skipped_nonfinite": 0}  # fmt: skip
    q.update(changes)
    return q


MISALIGNED = {"misaligned": True, "deficit": 0.3, "recent": [0.3], "threshold": 0.15}


# -- quality -------------------------------------------------------------------------------
def test_every_checkpoint_records_the_quality_figures_an_operator_decides_on(trained):
    _, ckpt = trained
    meta = json.loads((complete_checkpoints(ckpt)[-1] / "meta.json").read_text())
    q = meta["quality"]
    assert q["step"] == meta["step"] and q["skipped_nonfinite"] == 0
    assert set(q) >= {"reference", "a_last", "windows", "latest_windows", "misalignment"}
    assert q["windows"] and all(0 <= a <= 1 for a in q["windows"].values())
    assert set(q["misalignment"]) >= {"misaligned", "deficit", "recent", "threshold", "blame"}
    assert q["misalignment"]["blame"] in {"image", "text", "both", "none"}


# -- export ----------------------------------------------------------------------------------
def test_a_merged_export_loaded_by_open_clip_alone_gives_the_daemons_embeddings(
    trained, tmp_path, digit_stream
):
    daemon, ckpt = trained
    checkpoint = load_latest(ckpt)
    manifest = export(checkpoint, tmp_path, "merged")
    assert manifest["files"] == {n: sha256(tmp_path / n) for n in manifest["files"]}
    assert manifest["checkpoint"] == checkpoint.id and manifest["offsets"] == checkpoint.meta[
        "offsets"]  # fmt: skip
    # what a serving stack does: open_clip only, the export's folder (test_verify.py runs it
    # in a process that cannot import streamer)
    served = open_clip.create_model(f"local-dir:{tmp_path}").eval()
    model = daemon.engine.model
    pairs = [daemon.engine.to_pair(s) for s in digit_stream[:8]]
    # uint8 at model resolution; the mean/std step of open_clip's transform makes them its input
    pixels = model.normalise(torch.stack([p.pixels for p in pairs])).cpu()
    texts = [s.text for s in digit_stream[:8]]
    with torch.no_grad():
        img = torch.nn.functional.normalize(served.encode_image(pixels), dim=-1)
        txt = torch.nn.functional.normalize(served.encode_text(model.tokenizer(texts)), dim=-1)
        atol = 1e-5 if model.device.type == "cpu" else 1e-3  # a GPU's kernels differ a little
        assert torch.allclose(img, model.encode_images(pixels).cpu(), atol=atol)
        assert torch.allclose(txt, model.encode_texts(texts).cpu(), atol=atol)


def test_a_blend_of_zero_is_the_base_and_one_is_the_model_as_trained(trained, tmp_path):
    _, ckpt = trained
    checkpoint = load_latest(ckpt)
    model = model_for(checkpoint)
    with model.base() as base_net:
        base = {k: v.clone() for k, v in merged_state_dict(base_net).items()}
    export(checkpoint, tmp_path / "zero", "merged", blend=0.0, model=model)
    blended = load_merged(tmp_path / "zero").state_dict()
    assert all(torch.allclose(blended[k], base[k], atol=1e-6) for k in base)
    export(checkpoint, tmp_path / "one", "merged", blend=1.0, model=model)
    trained_state = load_merged(tmp_path / "one").state_dict()
    assert any(not torch.allclose(trained_state[k], base[k]) for k in base)  # it learned
    adapters = export(checkpoint, tmp_path / "adapters", "adapters", blend=0.0, model=model)
    assert adapters["format"] == "adapters" and adapters["blend"] == 0.0
    from safetensors.torch import load_file

    factors = load_file(str(tmp_path / "adapters" / "adapters.safetensors"))
    assert all(v.abs().max() == 0 for k, v in factors.items() if k.endswith("lora_B"))


# -- the gate --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quality", "cfg", "reason"),
    [
        (_quality(), {}, None),
        (_quality(), {"min_retention_ratio": 0.9}, "retention"),
        (_quality(reference=None), {"require_reference": True}, "no_reference"),
        (_quality(misalignment=MISALIGNED), {}, "misaligned"),
        (_quality(), {"min_window_accuracy": 0.6}, None),  # only the latest window
        (_quality(), {"min_window_accuracy": 0.6, "latest_windows": 2}, "window_accuracy"),
        (_quality(skipped_nonfinite=2), {}, "nonfinite"),
        (None, {}, "no_quality"),
    ],
)
def test_the_gate_names_each_reason_it_refuses(quality, cfg, reason):
    cfg = {"min_retention_ratio": 0.8, **cfg}
    verdict = gate.judge(quality, GateConfig(**cfg), published=None)
    assert verdict.reasons == ((reason,) if reason else ())
    assert all(r in gate.REASONS for r in verdict.reasons)


def test_non_finite_steps_count_since_the_last_published_version():
    cfg = GateConfig(min_retention_ratio=0.0)
    assert gate.judge(_quality(skipped_nonfinite=3), cfg, _quality(skipped_nonfinite=3)).passed
    assert not gate.judge(_quality(skipped_nonfinite=4), cfg, _quality(skipped_nonfinite=3)).passed


# -- the store -------------------------------------------------------------------------------
def _an_export(tmp_path: Path, n: int) -> Path:
    out = tmp_path / f"export-{n}"
    out.mkdir()
    (out / "weights.bin").write_bytes(bytes([n]) * 300_000)
    (out / MANIFEST).write_text(json.dumps({"files": {"weights.bin": sha256(out / "weights.bin")},
                                            "checkpoint": f"ckpt-{n}"}))  # fmt: skip
    return out


@pytest.mark.parametrize("where", ["dir", "memory"])
def test_versions_are_immutable_and_a_reader_never_sees_a_partial_one(tmp_path, where):
    url = str(tmp_path / "pub") if where == "dir" else f"memory://pub-{tmp_path.name}"
    store, reader = VersionStore(url), VersionStore(url)
    seen, problems, done = [], [], threading.Event()

    def poll() -> None:
        while not done.is_set():
            pointer = reader.latest()
            if pointer is None:
                continue
            seen.append(pointer["version"])
            for name, digest in pointer["manifest"]["files"].items():
                data = reader.read(pointer["version"], name)
                if hashlib.sha256(data).hexdigest() != digest:
                    problems.append((pointer["version"], name))

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        for n in range(1, 8):
            assert store.publish(_an_export(tmp_path, n)) == f"v{n:06d}"
    finally:
        done.set()
        thread.join()
    assert not problems and seen and seen == sorted(seen)
    assert store.versions() == [f"v{n:06d}" for n in range(1, 8)]
    with pytest.raises(RuntimeError, match="immutable"):
        store.publish(_an_export(tmp_path, 9), version="v000003")
    assert store.read("v000003", "weights.bin") == bytes([3]) * 300_000


# -- the publisher ---------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["dir", "memory"])
def test_the_publisher_publishes_what_passes_and_keeps_its_checkpoint(trained, tmp_path, where):
    _, ckpt = trained
    url = str(tmp_path / "pub") if where == "dir" else f"memory://p-{where}-{tmp_path.name}"
    cfg = PublishConfig(enabled=True, url=url, gate={"min_retention_ratio": 0.0})
    metrics = PublishMetrics(CollectorRegistry())
    publisher = Publisher(cfg, ckpt, metrics, steps=lambda: 0)
    version = publisher.publish_latest()
    assert version == "v000001" and publisher.publish_latest() is None  # judged once
    pointer = VersionStore(url).latest()
    assert pointer["version"] == version
    assert pointer["manifest"]["checkpoint"] == load_latest(ckpt).id
    assert (ckpt / pointer["manifest"]["checkpoint"] / PUBLISHED).exists()
    assert metrics.version._value.get() == 1


def test_a_refused_checkpoint_is_never_visible_and_auto_rollback_names_the_last_published(
    trained, tmp_path
):
    _, ckpt = trained
    url = str(tmp_path / "pub")
    paths = complete_checkpoints(ckpt)
    registry = CollectorRegistry()
    cfg = PublishConfig(enabled=True, url=url, gate={"min_retention_ratio": 0.0},
                        auto_rollback={"enabled": True, "after_failures": 2})  # fmt: skip
    publisher = Publisher(cfg, ckpt, PublishMetrics(registry), steps=lambda: 0)
    publisher.judged = None
    first = read(paths[0])
    publisher._publish(first)
    strict = cfg.model_copy(update={"gate": GateConfig(require_reference=True)})
    publisher.cfg = strict
    assert publisher.publish_latest() is None  # refused: one
    assert publisher.rollback_to is None
    publisher.judged = None
    assert publisher.publish_latest() is None  # two in a row
    assert publisher.rollback_to == first.id
    assert VersionStore(url).latest()["manifest"]["checkpoint"] == first.id
    refused = registry.get_sample_value("streamer_publish_gate_failures_total",
                                        {"reason": "no_reference"})  # fmt: skip
    assert refused == 2 and registry.get_sample_value("streamer_publish_gate_passing") == 0


def test_publishing_is_off_by_default_and_bad_fields_are_named():
    assert not PublishConfig().enabled
    with pytest.raises(ValidationError, match="storage_options"):
        PublishConfig(storage_options={"secret": "x"})
    with pytest.raises(ValidationError, match="credentials"):
        PublishConfig(url="s3://AKIA:hunter2@bucket/models")
    with pytest.raises(ValidationError, match="blend"):
        PublishConfig(blend=1.5)
    with pytest.raises(ValidationError, match="format"):
        PublishConfig(format="onnx")


def test_a_store_that_cannot_be_written_is_retried_and_counted_and_training_goes_on(
    tmp_path, digit_stream
):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's directory should be")
    publish = {"enabled": True, "url": str(blocked / "pub"), "every_steps": 1,
               "every_seconds": 0.05, "retries": 1, "retry_backoff_seconds": 0.01,
               "gate": {"min_retention_ratio": 0.0}}  # fmt: skip
    records = _records(digit_stream[:160])
    source = MemorySource(records, lambda raw: None)
    run = Run(_settings(tmp_path, publish=publish), source)
    source._decode = run.daemon.engine.decoder.decode
    registry = run.daemon.metrics.registry

    def failed_and_done(daemon) -> bool:
        failures = registry.get_sample_value("streamer_publish_failures_total") or 0
        return failures >= 1 and daemon.ledger.accounted >= len(records)

    run.until(failed_and_done)
    assert run.code == 0 and run.daemon.ledger.accounted == len(records)
    assert registry.get_sample_value("streamer_publish_retries_total") >= 1
    assert registry.get_sample_value("streamer_publish_failures_total") >= 1
    assert registry.get_sample_value("streamer_publish_version") == 0


def test_a_slow_upload_does_not_hold_up_training(tmp_path, digit_stream, monkeypatch):
    """The upload of a version takes 4 s; steps go on meanwhile, as fast as ever."""
    started, finished, steps = threading.Event(), threading.Event(), []
    real = VersionStore.publish

    def slow(self, local, version=None):
        started.set()
        threading.Event().wait(4.0)
        try:
            return real(self, local, version)
        finally:
            finished.set()

    monkeypatch.setattr(VersionStore, "publish", slow)
    publish = {"enabled": True, "url": f"memory://slow-{tmp_path.name}", "every_steps": 1,
               "every_seconds": 0.05, "gate": {"min_retention_ratio": 0.0}}  # fmt: skip
    records = _records(digit_stream[:1200])
    source = MemorySource(records, lambda raw: None)

    def on_step(outcome, daemon) -> None:
        steps.append((time.monotonic(), started.is_set() and not finished.is_set()))

    run = Run(_settings(tmp_path, publish=publish), source, on_step=on_step)
    source._decode = run.daemon.engine.decoder.decode
    run.until(lambda daemon: finished.is_set() or daemon.ledger.accounted >= len(records))
    during = [t for t, uploading in steps if uploading]
    assert finished.is_set() and len(during) >= 10  # steps kept coming while it uploaded
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < 2.0, max(gaps)
