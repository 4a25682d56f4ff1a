"""Strategies: regularizers toward a teacher, teachers as views, served averages, replay
policies, SIT directions."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from streamer.config import ReplayConfig
from streamer.learning import losses
from streamer.learning.replay_policies import build_replay
from streamer.records import Sample
from streamer.service.pipeline import build_engine

from .conftest import tiny_settings


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


# -- the pure terms ----------------------------------------------------------------------


def test_structure_is_zero_on_the_teacher_and_pulls_a_moved_student_back():
    img, txt = _unit(8, 16, 0), _unit(4, 16, 1)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    txt_t = txt.clone()
    img_t = F.normalize(txt_t[target] + 0.1 * img, dim=-1)  # a teacher that matches its texts
    same = losses.structure(img_t.clone(), txt_t.clone(), target, img_t, txt_t, 10.0)
    assert float(same) == pytest.approx(0.0, abs=1e-7)
    moved = img.clone().requires_grad_(True)
    value = losses.structure(moved, txt, target, img_t, txt_t, 10.0)
    value.backward()
    assert float(value) > 0 and moved.grad.abs().sum() > 0


def test_structure_leaves_out_the_rows_the_teacher_got_wrong():
    img, txt = _unit(4, 8, 2), _unit(4, 8, 3)
    target = torch.arange(4)
    wrong_teacher = txt[[1, 2, 3, 0]]  # every image's best text is someone else's
    assert float(losses.structure(img, txt, target, wrong_teacher, txt, 5.0)) == 0.0


def test_logit_distillation_is_least_on_the_teacher_and_has_a_gradient_elsewhere():
    teacher = 5 * _unit(6, 8, 4) @ _unit(3, 8, 5).t()
    student = teacher.clone().requires_grad_(True)
    at_teacher = losses.distill_logits(student, teacher)
    at_teacher.backward()
    assert float(at_teacher) == pytest.approx(0.0, abs=1e-6)
    assert student.grad.abs().max() < 1e-6  # the minimum: the teacher's own distribution
    other = (5 * _unit(6, 8, 6) @ _unit(3, 8, 7).t()).requires_grad_(True)
    value = losses.distill_logits(other, teacher)
    value.backward()
    assert float(value) > float(at_teacher) and other.grad.abs().sum() > 0


def test_sit_image_to_text_only_is_the_papers_loss():
    img, txt, target = _unit(6, 8, 8), _unit(3, 8, 9), torch.tensor([0, 1, 2, 0, 1, 2])
    one = losses.sit(img, txt, target, torch.tensor(10.0), both_directions=False)
    assert float(one) == pytest.approx(float(F.cross_entropy(10.0 * img @ txt.t(), target)))


# -- teachers and regularizers on the model ------------------------------------------------


def _engine(**learner):
    return build_engine(tiny_settings(learner={"replay_per_step": 0, **learner}))


def _step(engine, samples) -> None:
    engine.learner.step([engine.to_pair(s) for s in samples])


@pytest.mark.parametrize("kind", ["structure", "logits", "l2"])
def test_each_regularizer_is_zero_at_its_teacher_and_has_a_gradient_after_learning(
    kind, digit_stream
):
    engine = _engine(regularizer={"kind": kind, "teacher": "base"}, replay_per_step=8)
    for p in engine.model.trainable_parameters().values():  # B = 0: the student is the base
        p.grad = None
    pairs = [engine.to_pair(s) for s in digit_stream[:16]]
    engine.replay.add(digit_stream[20])  # logits draws its reference pairs from replay
    for s in digit_stream[21:40]:
        engine.replay.add(s)
    term = _term(engine, pairs)
    assert float(term) == pytest.approx(0.0, abs=1e-6)
    _step(engine, digit_stream[:32])  # the student moves away from the base
    term = _term(engine, pairs)
    term.backward()
    grads = [p.grad for p in engine.model.trainable_parameters().values() if p.grad is not None]
    assert float(term) > 0 and sum(float(g.abs().sum()) for g in grads) > 0


def _term(engine, pairs):
    engine.model.net.train()
    pixels = engine.model.stack_pixels([p.pixels for p in pairs])
    img = engine.model.encode_images(pixels)
    prompts = [p.sample.prompt("a photo of a {label}.") for p in pairs]
    return engine.learner.regularizer.term(pixels, img, prompts, engine.model.logit_scale())


def test_the_ema_of_lora_averages_the_products_b_a_not_the_factors(digit_stream):
    engine = _engine(serve="ema", ema_decay=0.5, steps_per_batch=1)
    teachers = engine.teachers
    expected = {n: torch.zeros_like(t) for n, t in teachers.current().items()}
    for i in range(3):
        _step(engine, digit_stream[16 * i : 16 * i + 16])
        for name, now in teachers.current().items():
            expected[name] = 0.5 * expected[name] + 0.5 * now
    for name, ema in teachers.ema.items():
        torch.testing.assert_close(ema, expected[name], rtol=1e-6, atol=1e-8)
    module = teachers.adapters[next(iter(teachers.adapters))]
    factors = module.scale * module.lora_B @ module.lora_A  # today's product, not the EMA
    assert not torch.allclose(factors, teachers.ema[next(iter(teachers.ema))])


def test_the_served_view_evaluates_ema_or_blend_without_touching_the_trained_weights(
    digit_stream,
):
    engine = _engine(serve="wise", wise_alpha=0.0)
    _step(engine, digit_stream[:32])
    before = engine.model.trainable_state()
    pixels = torch.stack([engine.to_pair(s).pixels for s in digit_stream[:4]])
    with engine.serving():
        blended = engine.model.encode_images(pixels)
    with engine.model.base() as base:
        at_base = engine.model.encode_images(pixels, base)
    torch.testing.assert_close(blended, at_base)  # alpha 0 is the base
    after = engine.model.trainable_state()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "learner",
    [{"serve": "ema"}, {"regularizer": {"kind": "structure", "weight": 0.0}},
     {"regularizer": {"kind": "l2", "weight": 0.0, "teacher": "ema"}}],
)  # fmt: skip
def test_a_strategy_that_changes_nothing_leaves_training_bit_identical(learner, digit_stream):
    plain, other = _engine(), _engine(**learner)
    for engine in (plain, other):
        torch.manual_seed(0)
        for i in range(3):
            _step(engine, digit_stream[16 * i : 16 * i + 16])
    a, b = plain.model.trainable_state(), other.model.trainable_state()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "learner",
    [{"serve": "ema"}, {"regularizer": {"kind": "structure", "teacher": "window"}},
     {"regularizer": {"kind": "logits", "teacher": "ema"}}],
)  # fmt: skip
def test_each_strategy_survives_a_checkpoint_round_trip(learner, digit_stream):
    first = _engine(replay_per_step=8, **learner)
    for i in range(2):
        _step(first, digit_stream[16 * i : 16 * i + 16])
    first.teachers.window_closed()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    second = _engine(replay_per_step=8, **learner)
    second.load_state_dict(state)
    for a, b in ((first.teachers.ema, second.teachers.ema),
                 (first.teachers.window, second.teachers.window)):  # fmt: skip
        assert (a is None) == (b is None) and all(torch.equal(a[k], b[k]) for k in a or {})
    torch.set_rng_state(state["learner"]["torch_rng"])
    _step(first, digit_stream[32:48])
    torch.set_rng_state(state["learner"]["torch_rng"])
    _step(second, digit_stream[32:48])
    x, y = first.model.trainable_state(), second.model.trainable_state()
    assert all(torch.equal(x[k], y[k]) for k in x)


# -- replay policies ------------------------------------------------------------------------


def _samples(windows: int, per: int, size: int = 100) -> list[Sample]:
    return [Sample(f"w{w}-{i}", b"x" * size, "t", "l", f"w{w}", 0.0)
            for w in range(windows) for i in range(per)]  # fmt: skip


def _window(sample: Sample) -> str:
    return sample.task


def test_per_window_replay_gives_each_window_an_equal_share_within_the_byte_bound():
    cfg = ReplayConfig(capacity=90, max_bytes=60 * 101, policy="per_window")
    replay = build_replay(cfg, 0, _window)
    for sample in _samples(3, 500):
        replay.add(sample)
    sizes = [len(b) for b in replay.windows.values()]
    assert sizes == [20, 20, 20]  # bytes bind: 60 samples of 101 bytes, a third each
    assert replay.nbytes <= cfg.max_bytes and len(replay) == 60
    drawn = replay.sample(30)
    assert sorted({s.task for s in drawn}) == ["w0", "w1", "w2"]
    assert all(sum(s.task == w for s in drawn) == 10 for w in ("w0", "w1", "w2"))
    again = build_replay(cfg, 0, _window)
    again.load_state_dict(replay.state_dict())
    assert [s.id for s in again.items()] == [s.id for s in replay.items()]


def test_recent_and_reservoir_keeps_the_recent_share_for_the_current_window():
    cfg = ReplayConfig(capacity=100, max_bytes=None, policy="recent_and_reservoir",
                       recent_share=0.4)  # fmt: skip
    replay = build_replay(cfg, 0, _window)
    for sample in _samples(4, 300):
        replay.add(sample)
    assert len(replay.recent) == 40 and {s.task for s in replay.recent.items()} == {"w3"}
    assert len(replay.old) == 60 and {s.task for s in replay.old.items()} == {"w0", "w1", "w2",
                                                                            "w3"}  # fmt: skip
    drawn = replay.sample(20)
    assert len(drawn) == 20 and sum(s.task == "w3" for s in drawn) >= 8
    again = build_replay(cfg, 0, _window)
    again.load_state_dict(replay.state_dict())
    assert sorted(s.id for s in again.items()) == sorted(s.id for s in replay.items())


def test_logits_can_score_the_references_against_the_new_labels_too(digit_stream):
    """texts reference+batch: the reference images are scored against their own labels and
    the step's (the new labels), so the base's preference for its own labels is what is kept."""
    first = digit_stream[0].label
    refs = [s for s in digit_stream if s.label == first][:8]
    others = [s for s in digit_stream if s.label != first][:16]
    scored = {}
    for texts in ("reference", "reference+batch"):
        engine = _engine(regularizer={"kind": "logits", "teacher": "base", "texts": texts},
                         replay_per_step=8)  # fmt: skip
        for s in refs:
            engine.replay.add(s)
        seen: list[list[str]] = []
        engine.model.encode_texts = _recording(engine.model.encode_texts, seen)
        pairs = [engine.to_pair(s) for s in others]
        assert float(_term(engine, pairs)) == pytest.approx(0.0, abs=1e-6)  # at the teacher
        scored[texts] = set(seen[0])
    own = {s.prompt("a photo of a {label}.") for s in refs}
    new = {s.prompt("a photo of a {label}.") for s in others}
    assert scored["reference"] == own
    assert scored["reference+batch"] == own | new and len(new - own) > 0


def _recording(encode, seen: list[list[str]]):
    """encode_texts that notes which texts it was asked for."""

    def recorded(texts, *args, **kwargs):
        seen.append(list(texts))
        return encode(texts, *args, **kwargs)

    return recorded
