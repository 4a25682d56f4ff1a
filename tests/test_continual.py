"""On a real class-incremental stream the engine learns, forgets without replay, and
forgets less with SIT + replay: the promise the project is built on."""

from __future__ import annotations

import pytest

from streamer.service.pipeline import build_engine, run_stream

from .conftest import tiny_settings

CHANCE_FIRST_WINDOW = 1 / 5  # five digit classes per task


def _run(digit_stream, replay: int):
    settings = tiny_settings(
        model={"arch": "streamer-tiny", "peft": {"mode": "full"}},
        learner={"loss": "sit", "lr": 5e-4, "batch_size": 16, "steps_per_batch": 3,
                 "replay_per_step": 16 if replay else 0},
        replay={"capacity": replay},
        evaluation={"probe_fraction": 0.15, "eval_every": 200, "probe_per_window": 100},
    )  # fmt: skip
    engine = build_engine(settings)
    final = run_stream(engine, digit_stream, batch_size=16)
    return engine.evaluator.matrix, final


@pytest.mark.slow
@pytest.mark.quality
def test_sit_with_replay_forgets_less_than_without(digit_stream):
    no_replay, final_plain = _run(digit_stream, replay=0)
    with_replay, final_sit = _run(digit_stream, replay=500)
    learned = no_replay.rows["task-0"]["task-0"].accuracy
    assert learned > 2.25 * CHANCE_FIRST_WINDOW  # well above chance after window 0
    assert final_plain.forgetting["task-0"] > 0.3  # catastrophic without replay
    assert with_replay.rows["task-0"]["task-0"].accuracy > 2.25 * CHANCE_FIRST_WINDOW
    assert final_sit.forgetting["task-0"] < final_plain.forgetting["task-0"] - 0.2
    assert final_sit.a_last > final_plain.a_last + 0.2
