"""Rehearsal of the base's domain (learner.rehearse): pairs of a manifest in every update."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from streamer.config import Settings
from streamer.config.checks import missing_files
from streamer.records import Sample
from streamer.service.pipeline import ManifestError, build_engine

from .conftest import tiny_settings


def _manifest(folder: Path, samples: list[Sample], name: str = "rehearse.jsonl") -> Path:
    lines = []
    for i, sample in enumerate(samples):
        (folder / f"{i}.png").write_bytes(sample.image)
        lines.append(json.dumps({"image": f"{i}.png", "label": sample.label}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _engine(manifest: Path | None, per_update: int = 6, distill: float = 0.0, **learner):
    rehearse = {"manifest": str(manifest) if manifest else None, "per_update": per_update,
                "distill": distill}  # fmt: skip
    return build_engine(tiny_settings(learner={"rehearse": rehearse, **learner}))


def _step(engine, samples: list[Sample]) -> None:
    engine.learner.step([engine.to_pair(s) for s in samples])


def _update_rows(engine) -> list[int]:
    """Rows of every update's batch, noted as the learner applies them."""
    rows: list[int] = []
    apply = engine.learner._apply

    def noted(batch, pixels, prompts):
        rows.append(len(batch))
        return apply(batch, pixels, prompts)

    engine.learner._apply = noted
    return rows


def test_each_update_rehearses_per_update_pairs_of_the_manifest(tmp_path, digit_stream):
    manifest = _manifest(tmp_path, digit_stream[-20:])
    engine = _engine(manifest, per_update=6)
    assert len(engine.learner.rehearsal) == 20
    rows = _update_rows(engine)
    _step(engine, digit_stream[:16])  # the replay is empty: fresh rows and rehearsed ones
    _step(engine, digit_stream[16:32])  # then 8 replayed join them
    assert rows == [16 + 6, 16 + 6, 16 + 8 + 6, 16 + 8 + 6]
    assert len(engine.replay) == 32  # rehearsed pairs are not remembered as stream samples
    assert engine.learner.samples == 32


def test_more_per_update_than_the_manifest_holds_rehearses_all_of_it(tmp_path, digit_stream):
    engine = _engine(_manifest(tmp_path, digit_stream[-4:]), per_update=50)
    rows = _update_rows(engine)
    _step(engine, digit_stream[:16])
    assert rows == [16 + 4, 16 + 4]


def test_rehearsal_changes_what_is_learned_and_zero_per_update_turns_it_off(tmp_path, digit_stream):
    manifest = _manifest(tmp_path, digit_stream[-20:])
    states = []
    for engine in (_engine(None), _engine(manifest, per_update=0), _engine(manifest)):
        torch.manual_seed(0)
        for i in range(2):
            _step(engine, digit_stream[16 * i : 16 * i + 16])
        states.append(engine.model.trainable_state())
    plain, off, on = states
    assert all(torch.equal(plain[k], off[k]) for k in plain)
    assert not all(torch.equal(plain[k], on[k]) for k in plain)


def test_distill_adds_zscls_term_on_the_rehearsed_pairs_against_the_new_labels(
    tmp_path, digit_stream
):
    manifest = _manifest(tmp_path, digit_stream[-20:])
    assert _engine(manifest, distill=0.0).learner.regularizer is None
    engine = _engine(manifest, distill=2.0)
    regularizer = engine.learner.regularizer
    assert (regularizer.cfg.kind, regularizer.cfg.teacher) == ("logits", "base")
    assert (regularizer.cfg.texts, regularizer.cfg.weight) == ("reference+batch", 2.0)
    rehearsed = {id(p) for p in engine.learner.rehearsal.pairs}
    assert all(id(p) in rehearsed for p in regularizer._references(8, regularizer._rng))
    pairs = [engine.to_pair(s) for s in digit_stream[:16]]
    engine.model.net.train()
    pixels = engine.model.stack_pixels([p.pixels for p in pairs])
    img = engine.model.encode_images(pixels)
    prompts = [p.sample.prompt("a photo of a {label}.") for p in pairs]
    term = regularizer.term(pixels, img, prompts, engine.model.logit_scale())
    assert term.item() == pytest.approx(0.0, abs=1e-6)  # the student is still the base
    assert _engine(None, distill=2.0).learner.regularizer is None  # nothing rehearsed


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_the_rehearsal_draw_resumes_exactly_from_a_checkpoint(tmp_path, digit_stream, distill):
    manifest = _manifest(tmp_path, digit_stream[-20:])
    first = _engine(manifest, distill=distill)
    for i in range(2):
        _step(first, digit_stream[16 * i : 16 * i + 16])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = _engine(manifest, distill=distill)
    second.load_state_dict(state)
    for engine in (first, second):
        torch.set_rng_state(state["learner"]["torch_rng"])
        _step(engine, digit_stream[32:48])
    x, y = first.model.trainable_state(), second.model.trainable_state()
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_a_bad_image_in_the_manifest_stops_start_up_naming_its_line(tmp_path, digit_stream):
    manifest = _manifest(tmp_path, digit_stream[:3])
    (tmp_path / "1.png").write_bytes(b"not an image")
    with pytest.raises(ManifestError, match=r"rehearse\.jsonl"):
        _engine(manifest)


def test_the_manifest_must_be_there_and_apart_from_the_reference(tmp_path):
    gone = tmp_path / "gone.jsonl"
    settings = Settings.model_validate({"learner": {"rehearse": {"manifest": str(gone)}}})
    assert any(p.startswith("learner.rehearse.manifest") for p in missing_files(settings))
    with pytest.raises(ValidationError, match=r"learner\.rehearse\.manifest"):
        Settings.model_validate({"learner": {"rehearse": {"manifest": str(gone)}},
                                 "evaluation": {"reference_manifest": str(gone)}})  # fmt: skip
    with pytest.raises(ValidationError, match="per_update"):
        Settings.model_validate({"learner": {"rehearse": {"per_update": -1}}})
    both = {"rehearse": {"manifest": str(gone)}, "regularizer": {"kind": "l2"}}
    with pytest.raises(ValidationError, match=r"rehearse\.distill"):
        Settings.model_validate({"learner": both})
    Settings.model_validate({"learner": {**both, "rehearse": {"manifest": str(gone),
                                                              "distill": 0.0}}})  # fmt: skip


def test_the_demos_plain_fine_tuning_rehearses_nothing(tmp_path, digit_stream):
    from streamer.dev.compare import plain_finetuning

    manifest = _manifest(tmp_path, digit_stream[-8:])
    settings = tiny_settings(learner={"rehearse": {"manifest": str(manifest)}})
    engine = build_engine(plain_finetuning(settings))
    assert engine.learner.rehearsal is None and engine.learner.regularizer is None
    assert build_engine(settings).learner.rehearsal is not None
