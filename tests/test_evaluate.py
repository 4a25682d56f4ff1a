"""The evaluator: probe routing, windows, boundaries, alignment against the base model."""

from __future__ import annotations

import dataclasses

import pytest

from streamer.evaluate import probe_bucket
from streamer.pipeline import build_engine, run_stream
from streamer.records import Sample

from .conftest import tiny_settings


def _at(sample: Sample, **changes) -> Sample:
    return dataclasses.replace(sample, **changes)


def test_probe_slice_is_deterministic_and_of_the_configured_size():
    ids = [f"record-{i}" for i in range(20_000)]
    share = sum(probe_bucket(i) < 0.1 for i in ids) / len(ids)
    assert share == pytest.approx(0.1, abs=0.01)
    assert [probe_bucket(i) for i in ids[:50]] == [probe_bucket(i) for i in ids[:50]]


def test_window_is_the_task_else_a_time_bucket(digit_stream):
    evaluator = build_engine(tiny_settings(evaluation={"window_seconds": 60})).evaluator
    sample = digit_stream[0]
    assert evaluator.window_of(sample) == "task-0"
    assert evaluator.window_of(_at(sample, task=None, ts=125.0)) == "t2"


def test_a_new_window_closes_the_previous_row_and_late_records_do_not(digit_stream):
    engine = build_engine(tiny_settings())
    evaluator, labels = engine.evaluator, engine.learner.labels
    first = [_at(s, task="a") for s in digit_stream[:16]]
    second = [_at(s, task="b") for s in digit_stream[16:32]]
    for s in digit_stream[32:40]:
        evaluator.add_probe(_at(s, task="a"))
    assert evaluator.before_step(first, labels) is None  # the first window opens nothing
    engine.learner.step([engine.to_pair(s) for s in first])
    report = evaluator.before_step(second, labels)
    assert report is not None and "a" in report.accuracy
    assert set(evaluator.matrix.rows) == {"a"} and evaluator.current == "b"
    assert evaluator.before_step(first, labels) is None  # a late record of "a"
    assert evaluator.current == "b"


def test_probes_of_windows_beyond_the_bound_are_dropped(digit_stream):
    evaluator = build_engine(tiny_settings(evaluation={"max_windows": 3})).evaluator
    for i, sample in enumerate(digit_stream[:50]):
        evaluator.add_probe(_at(sample, task=f"w{i % 10}"))
    assert len(evaluator.probes) == 3 and len(evaluator.matrix.windows) == 3


def test_lora_model_has_no_drift_before_learning_and_some_after(digit_stream):
    engine = build_engine(tiny_settings())
    for sample in digit_stream[:40]:
        engine.evaluator.add_probe(sample)
    before = engine.evaluator.evaluate(engine.learner.labels).alignment
    assert before["image_drift"] == pytest.approx(0.0, abs=1e-6)
    assert before["text_drift"] == pytest.approx(0.0, abs=1e-6)
    assert before["structure_kl"] == pytest.approx(0.0, abs=1e-5)
    assert before["misalignment_instant"] == pytest.approx(0.0, abs=1e-5)
    run_stream(engine, digit_stream[40:200], batch_size=16)
    after = engine.evaluator.evaluate(engine.learner.labels).alignment
    assert after["image_drift"] > 1e-5 and after["text_drift"] > 1e-5
    expected = {
        "matched_cosine", "modality_gap", "alignment", "uniformity_image", "uniformity_text",
        "recall_at_1_image_to_text", "recall_at_1_text_to_image", "recall_at_5_image_to_text",
        "recall_at_5_text_to_image", "image_drift", "text_drift", "structure_kl",
        "misalignment", "misalignment_instant",
    }  # fmt: skip
    assert set(after) == expected


def test_periodic_evaluation_follows_the_configured_cadence(digit_stream):
    engine = build_engine(tiny_settings(evaluation={"eval_every": 50, "probe_fraction": 0.1}))
    reports = []
    run_stream(engine, digit_stream[:300], batch_size=16, on_step=lambda r, e: reports.append(e))
    samples = [e.samples for e in reports if e is not None]
    # one evaluation each time the trained count crosses a multiple of 50
    assert [n // 50 for n in samples] == list(range(1, len(samples) + 1))
    assert len(engine.evaluator.matrix.curve) == len(samples) + 1  # and the final one


def test_a_reference_manifest_is_a_window_that_is_never_dropped(tmp_path, digit_stream):
    import json

    lines = []
    for i, sample in enumerate(digit_stream[:12]):
        (tmp_path / f"{i}.png").write_bytes(sample.image)
        lines.append(json.dumps({"image": f"{i}.png", "text": sample.text, "label": sample.label}))
    (tmp_path / "reference.jsonl").write_text("\n".join(lines))
    settings = tiny_settings(
        evaluation={"max_windows": 2, "reference_manifest": str(tmp_path / "reference.jsonl")}
    )
    engine = build_engine(settings)
    for i, sample in enumerate(digit_stream[12:60]):
        engine.evaluator.add_probe(_at(sample, task=f"w{i % 6}"))
    assert "reference" in engine.evaluator.matrix.windows and len(engine.evaluator.probes) == 3
    report = engine.evaluator.evaluate(engine.learner.labels)
    assert "reference" in report.accuracy
    restored = build_engine(settings)
    restored.evaluator.load_state_dict(engine.evaluator.state_dict())
    assert restored.evaluator.matrix.pinned == {"reference"}
    assert len(restored.evaluator.probes["reference"]) == 12
