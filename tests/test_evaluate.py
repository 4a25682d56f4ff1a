"""The evaluator: probe routing, windows, boundaries, alignment against the base model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from streamer.config import EvaluationConfig
from streamer.evaluation.evaluate import Evaluator, probe_bucket
from streamer.records import Sample
from streamer.service.pipeline import build_engine, run_stream

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
    for s in digit_stream[32:60]:
        evaluator.add_probe(_at(s, task="a"))
    base = evaluator.before_step(first, labels)  # the first step: the base's row, no row closes
    assert base is not None and base.kind == "base" and base.samples == 0
    engine.learner.step([engine.to_pair(s) for s in first])
    report = evaluator.before_step(second, labels)
    assert report is not None and report.kind == "boundary" and "a" in report.accuracy
    assert set(evaluator.matrix.rows) == {"a"} and evaluator.current == "b"
    assert evaluator.before_step(first, labels) is None  # a late record of "a"
    assert evaluator.current == "b"


def test_a_row_closes_before_any_training_on_the_next_window(digit_stream):
    engine = build_engine(tiny_settings())
    evaluator, labels = engine.evaluator, engine.learner.labels
    for s in digit_stream[100:125]:
        evaluator.add_probe(_at(s, task="b"))  # probes of "b" that arrived early
    for s in digit_stream[125:150]:
        evaluator.add_probe(_at(s, task="a"))
    evaluator.before_step([_at(s, task="a") for s in digit_stream[:16]], labels)
    engine.learner.step([engine.to_pair(_at(s, task="a")) for s in digit_stream[:16]])
    evaluator.before_step([_at(s, task="b") for s in digit_stream[16:32]], labels)
    matrix = evaluator.matrix
    assert "b" in matrix.rows["a"] and matrix.is_forward("a", "b")  # measured before "b"
    assert not matrix.is_forward("a", "a") and matrix.started == ["a", "b"]


def test_probes_of_windows_beyond_the_bound_are_dropped(digit_stream):
    evaluator = build_engine(tiny_settings(evaluation={"max_windows": 3})).evaluator
    for i, sample in enumerate(digit_stream[:50]):
        evaluator.add_probe(_at(sample, task=f"w{i % 10}"))
    assert len(evaluator.probes) == 3 and len(evaluator.matrix.windows) == 3


def test_lora_model_has_no_drift_before_learning_and_some_after(digit_stream):
    engine = build_engine(tiny_settings())
    for sample in digit_stream[:40]:
        engine.evaluator.add_probe(sample)
    before = engine.evaluator.evaluate(engine.learner.labels)
    assert before.alignment["image_drift"] == pytest.approx(0.0, abs=1e-6)
    assert before.alignment["text_drift"] == pytest.approx(0.0, abs=1e-6)
    swap = before.diagnosis.swap  # LoRA B = 0: every swap is the base itself
    assert swap.now == swap.image_base == swap.text_base == swap.base
    assert before.diagnosis.image_blame == 0.0 and before.diagnosis.text_blame == 0.0
    run_stream(engine, digit_stream[40:200], batch_size=16)
    after = engine.evaluator.evaluate(engine.learner.labels)
    assert after.alignment["image_drift"] > 1e-5 and after.alignment["text_drift"] > 1e-5
    expected = {
        "matched_cosine", "modality_gap", "alignment", "uniformity_image", "uniformity_text",
        "recall_at_1_image_to_text", "recall_at_1_text_to_image", "recall_at_5_image_to_text",
        "recall_at_5_text_to_image", "image_drift", "text_drift",
    }  # fmt: skip
    assert set(after.alignment) == expected
    assert 0.0 <= after.diagnosis.deficit <= 1.0
    assert after.diagnosis.probes == sum(after.probes.values()) == 32  # probe_per_window


def test_periodic_evaluation_follows_the_configured_cadence(digit_stream):
    engine = build_engine(tiny_settings(evaluation={"eval_every": 50, "probe_fraction": 0.1}))
    reports = []
    run_stream(engine, digit_stream[:300], batch_size=16, on_step=lambda r, e: reports.append(e))
    reports = [e for e in reports if e is not None]
    assert reports[0].kind == "base" and reports[0].samples == 0
    samples = [e.samples for e in reports if e.kind == "periodic"]
    # one evaluation each time the trained count crosses a multiple of 50
    assert [n // 50 for n in samples] == list(range(1, len(samples) + 1))
    # the curve: periodic evaluations only (not the final one), once a window has min_probes
    curve = engine.evaluator.matrix.curve
    assert curve and [n for n, _ in curve] == [n for n in samples if n >= curve[0][0]]
    weight = {n: n - before for before, n in zip([0, *samples], samples, strict=False)}
    expected = sum(weight[n] * a for n, a in curve) / sum(weight[n] for n, _ in curve)
    assert engine.evaluator.matrix.a_auc() == pytest.approx(expected)


def test_the_step_0_row_survives_a_restore_and_does_not_run_again(tmp_path, digit_stream):
    settings = tiny_settings(evaluation={"eval_every": 10_000})
    engine = build_engine(settings)
    stream = [_at(s, task="a" if i < 300 else "b") for i, s in enumerate(digit_stream[:600])]
    run_stream(engine, stream, batch_size=16)
    evaluator = engine.evaluator
    assert set(evaluator.matrix.base) == {"a", "b"}  # "b" measured on the base when it could be
    assert evaluator.matrix.measured(evaluator.matrix.base["b"])
    torch.save(evaluator.state_dict(), tmp_path / "evaluator.pt")
    restored = build_engine(settings).evaluator
    restored.load_state_dict(torch.load(tmp_path / "evaluator.pt", weights_only=True))
    assert restored.evaluate_base(engine.learner.labels) is None
    assert restored.matrix.state_dict() == evaluator.matrix.state_dict()
    assert restored.classes.state_dict() == evaluator.classes.state_dict()
    report = restored.evaluate(engine.learner.labels)
    assert report.forgetting.keys() == {"a"} and set(report.forward_transfer) <= {"b"}


def test_base_cells_are_the_base_models_accuracy(digit_stream):
    # Both windows had too few probes at step 0; their base cells come from the base model
    # at the final evaluation. A fresh LoRA engine (B = 0) is that base: it must agree.
    settings = tiny_settings(evaluation={"eval_every": 10_000})
    engine = build_engine(settings)
    stream = [_at(s, task="a" if i < 300 else "b") for i, s in enumerate(digit_stream[:600])]
    run_stream(engine, stream, batch_size=16)
    fresh = build_engine(settings).evaluator
    for buffer in engine.evaluator.probes.values():
        for sample in buffer.items():
            fresh.add_probe(sample)
    naive = fresh.evaluate(engine.learner.labels).accuracy
    base = engine.evaluator.matrix.base
    assert {w: c.accuracy for w, c in base.items()} == pytest.approx(naive)


def test_an_evaluator_state_of_the_old_protocol_still_loads(engine, digit_stream):
    for sample in digit_stream[:30]:
        engine.evaluator.add_probe(sample)
    state = engine.evaluator.state_dict()
    for key in ("format", "classes", "base_done", "deficits"):
        del state[key]
    state["samples"], state["current"] = 500, "task-0"
    state["matrix"] = {"windows": ["task-0"], "pinned": [], "rows": {}, "latest": {"task-0": 0.5},
                       "curve": [[64, 0.5]], "auc": [0.5, 1]}  # fmt: skip
    restored = build_engine(tiny_settings()).evaluator
    restored.load_state_dict(state)
    assert restored.evaluate_base([]) is None  # trained already: no step-0 row now
    assert restored.matrix.started == ["task-0"] and len(restored.probes["task-0"]) == 30


def test_misalignment_must_persist_over_the_window(engine):
    cfg = EvaluationConfig(misalignment_window=3, misalignment_threshold=0.3)
    evaluator = Evaluator(cfg, engine.model, lambda s: None, "{label}")
    held = [evaluator.hold(v) for v in (0.9, 0.8, 0.1, 0.5, 0.6, 0.7)]
    assert held == [False, False, False, False, False, True]  # three in a row over 0.3
    restored = Evaluator(cfg, engine.model, lambda s: None, "{label}")
    restored.load_state_dict(evaluator.state_dict())
    assert restored.misaligned() and restored.hold(0.1) == evaluator.hold(0.1) is False


def test_a_reference_manifest_is_a_window_that_is_never_dropped(tmp_path, digit_stream):
    import json

    lines = []
    for i, sample in enumerate(digit_stream[:24]):  # at least min_probes
        (tmp_path / f"{i}.png").write_bytes(sample.image)
        lines.append(json.dumps({"image": f"{i}.png", "text": sample.text, "label": sample.label}))
    (tmp_path / "reference.jsonl").write_text("\n".join(lines))
    settings = tiny_settings(
        evaluation={"max_windows": 2, "reference_manifest": str(tmp_path / "reference.jsonl")}
    )
    engine = build_engine(settings)
    for i, sample in enumerate(digit_stream[24:72]):
        engine.evaluator.add_probe(_at(sample, task=f"w{i % 6}"))
    assert "reference" in engine.evaluator.matrix.windows and len(engine.evaluator.probes) == 3
    report = engine.evaluator.evaluate(engine.learner.labels)
    assert "reference" in report.accuracy
    restored = build_engine(settings)
    restored.evaluator.load_state_dict(engine.evaluator.state_dict())
    assert restored.evaluator.matrix.pinned == {"reference"}
    assert len(restored.evaluator.probes["reference"]) == 24
