"""The learner: test-then-train, the non-finite guard, exact resumption from state."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from streamer.records import Pair
from streamer.service.pipeline import build_engine, run_stream

from .conftest import tiny_settings


def _pairs(engine, samples) -> list[Pair]:
    return [engine.to_pair(s) for s in samples]


def test_step_scores_the_fresh_batch_before_learning_from_it(digit_stream):
    engine = build_engine(tiny_settings())
    batch = _pairs(engine, digit_stream[:16])
    engine.learner.step(batch)  # so the label set is not empty
    expected = engine.learner.score(batch)
    result = engine.learner.step(batch)
    assert (result.prequential_loss, result.prequential_accuracy) == pytest.approx(expected)
    assert result.updates == 2 and result.samples == 16 and result.step == 2
    assert engine.learner.score(batch)[0] < result.prequential_loss  # it learned from it
    assert len(engine.replay) == 32


def test_replayed_samples_are_mixed_into_every_update(digit_stream):
    engine = build_engine(tiny_settings(learner={"replay_per_step": 8}))
    seen_batches: list[int] = []
    original = engine.learner._update
    seen_rows: list[int] = []

    def spy(batch, pixels=None):
        seen_batches.append(len(batch))
        seen_rows.append(len(pixels))
        return original(batch, pixels)

    engine.learner._update = spy
    engine.learner.step(_pairs(engine, digit_stream[:16]))
    engine.learner.step(_pairs(engine, digit_stream[16:32]))
    assert seen_batches == [16, 16, 24, 24]  # empty buffer first, then 8 replayed per step
    assert seen_rows == seen_batches  # the joined pixels hold every row, fresh and replayed


def test_nonfinite_loss_skips_the_update_and_leaves_weights_untouched(digit_stream):
    engine = build_engine(tiny_settings())
    engine.learner.step(_pairs(engine, digit_stream[:16]))
    before = engine.model.trainable_state()
    optimizer_before = engine.learner.optimizer.state_dict()["state"][0]["step"].item()
    poisoned = _pairs(engine, digit_stream[16:32])
    nan = torch.full(poisoned[3].pixels.shape, float("nan"))  # beside uint8 rows
    poisoned[3] = Pair(poisoned[3].sample, nan)
    result = engine.learner.step(poisoned)
    assert result.skipped_nonfinite == 2 and result.updates == 0
    assert engine.learner.skipped_nonfinite == 2
    after = engine.model.trainable_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert engine.learner.optimizer.state_dict()["state"][0]["step"].item() == optimizer_before
    healthy = engine.learner.step(_pairs(engine, digit_stream[32:48]))
    assert healthy.updates == 2 and healthy.skipped_nonfinite == 0


def test_nonfinite_gradient_alone_is_caught(digit_stream):
    engine = build_engine(tiny_settings())
    before = engine.model.trainable_state()
    param = next(iter(engine.model.trainable_parameters().values()))
    handle = param.register_hook(lambda g: torch.full_like(g, float("inf")))
    result = engine.learner.step(_pairs(engine, digit_stream[:16]))
    handle.remove()
    assert result.skipped_nonfinite == 2
    after = engine.model.trainable_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _checkpoint_round_trip(state: dict) -> dict:
    """As a checkpoint would: torch.save, then torch.load with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _same(a, b, path: str = "", exact: bool = False) -> None:
    """Equal, tensors included; floats within 1e-5 relative (1e-6 absolute) unless `exact`,
    NaN equal to NaN."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}", exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]", exact)
    elif isinstance(a, float):
        close = a == b if exact else math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
        assert (a != a and b != b) or close, path
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


def test_state_round_trip_gives_bit_identical_continuation(digit_stream):
    """Guaranteed: the learning itself (weights, optimizer, replay, steps) continues bit for
    bit. The evaluation figures are equal within float tolerance only: a restored evaluator
    recomputes the base model's probe embeddings in other batches than the straight run
    cached them in, and BLAS kernels round differently with the batch shape (seen: the 8th
    digit of a figure changed with the torch release)."""
    settings = tiny_settings(
        evaluation={"eval_every": 48, "probe_fraction": 0.2},
        model={"arch": "streamer-tiny", "peft": {"mode": "lora", "dropout": 0.1}},
    )
    first, rest = digit_stream[:160], digit_stream[160:320]
    straight = build_engine(settings)
    run_stream(straight, first, batch_size=16)
    state = _checkpoint_round_trip(straight.state_dict())
    resumed = build_engine(settings)
    resumed.load_state_dict(state)  # also sets the global RNG, as a restarted process would
    report_a = run_stream(straight, rest, batch_size=16)
    torch.set_rng_state(state["learner"]["torch_rng"])  # both runs share this process's RNG
    report_b = run_stream(resumed, rest, batch_size=16)
    a, b = straight.model.trainable_state(), resumed.model.trainable_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    optimizer_a, optimizer_b = straight.learner.optimizer, resumed.learner.optimizer
    _same(optimizer_a.state_dict()["state"], optimizer_b.state_dict()["state"])
    _same(straight.replay.state_dict(), resumed.replay.state_dict(), exact=True)
    assert straight.learner.steps == resumed.learner.steps
    assert straight.learner.labels == resumed.learner.labels
    _same(dataclasses.asdict(report_a), dataclasses.asdict(report_b))
    _same(straight.evaluator.state_dict(), resumed.evaluator.state_dict())


def _weights_after(settings, batches) -> tuple[dict, object]:
    engine = build_engine(settings)
    torch.manual_seed(0)  # dropout draws the same in both runs
    for batch in batches:
        engine.learner.step(_pairs(engine, batch))
    return engine.model.trainable_state(), engine


def test_the_pixels_store_learns_exactly_as_the_encoded_store(digit_stream):
    """Same residents, same draws, and the held pixels are what decoding gives: bit for bit."""
    batches = [digit_stream[i : i + 16] for i in range(0, 128, 16)]
    lora = {"arch": "streamer-tiny", "peft": {"mode": "lora", "dropout": 0.1}}
    encoded, _ = _weights_after(tiny_settings(model=lora), batches)
    pixels, engine = _weights_after(tiny_settings(model=lora, replay={"store": "pixels"}), batches)
    assert all(torch.equal(encoded[k], pixels[k]) for k in encoded)
    assert all(isinstance(e, Pair) and e.pixels.dtype == torch.uint8 for e in engine.replay.items())


def test_a_pixels_store_checkpoint_continues_bit_identically(digit_stream):
    settings = tiny_settings(replay={"store": "pixels", "max_bytes": 40 * 3 * 32 * 32})
    straight = build_engine(settings)
    run_stream(straight, digit_stream[:160], batch_size=16)
    state = _checkpoint_round_trip(straight.state_dict())
    resumed = build_engine(settings)
    resumed.load_state_dict(state)
    run_stream(straight, digit_stream[160:320], batch_size=16)
    torch.set_rng_state(state["learner"]["torch_rng"])
    run_stream(resumed, digit_stream[160:320], batch_size=16)
    a, b = straight.model.trainable_state(), resumed.model.trainable_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    held_a, held_b = straight.replay.items(), resumed.replay.items()
    assert [e.sample for e in held_a] == [e.sample for e in held_b]
    assert all(torch.equal(x.pixels, y.pixels) for x, y in zip(held_a, held_b, strict=True))
    assert straight.replay.nbytes == resumed.replay.nbytes <= 40 * 3 * 32 * 32
