"""Assembling the learning engine from a config, and the in-process test-then-train loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from streamer.config import Settings
from streamer.decode import decode_image
from streamer.evaluate import EvalReport, Evaluator
from streamer.learner import Learner, resolve_device
from streamer.model import ClipModel
from streamer.records import Pair, Sample, StepResult
from streamer.replay import ReplayBuffer


@dataclass
class Engine:
    model: ClipModel
    replay: ReplayBuffer
    learner: Learner
    evaluator: Evaluator

    def to_pair(self, sample: Sample) -> Pair:
        return pair_of(self.model, sample)

    def state_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "replay": self.replay.state_dict(),
            "evaluator": self.evaluator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.replay.load_state_dict(state["replay"])
        self.evaluator.load_state_dict(state["evaluator"])


def build_engine(settings: Settings) -> Engine:
    device = resolve_device(settings.learner.device)
    model = ClipModel(settings.model, device, seed=settings.learner.seed)
    replay = ReplayBuffer(settings.replay.capacity, settings.replay.max_bytes, settings.replay.seed)
    learner = Learner(model, replay, settings.learner, partial(pair_of, model))
    evaluator = Evaluator(
        settings.evaluation, model, partial(pixels_of, model), settings.learner.prompt_template
    )
    return Engine(model, replay, learner, evaluator)


def pixels_of(model: ClipModel, sample: Sample) -> torch.Tensor:
    """Encoded image -> the model's input tensor [3, H, W]."""
    return model.pixels(decode_image(sample.image))


def pair_of(model: ClipModel, sample: Sample) -> Pair:
    return Pair(sample, pixels_of(model, sample))


def training_batches(
    samples: Iterable[Sample], evaluator: Evaluator, batch_size: int
) -> Iterator[list[Sample]]:
    """Route probes to the evaluator; yield batches of `batch_size` samples to train on."""
    batch: list[Sample] = []
    for sample in samples:
        if evaluator.is_probe(sample):
            evaluator.add_probe(sample)
            continue
        batch.append(sample)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_stream(
    engine: Engine,
    samples: Iterable[Sample],
    batch_size: int,
    on_step: Callable[[StepResult, EvalReport | None], None] | None = None,
) -> EvalReport:
    """Prequential loop: evaluate on window change, score then learn each batch, report."""
    learner, evaluator = engine.learner, engine.evaluator
    for batch in training_batches(samples, evaluator, batch_size):
        boundary = evaluator.before_step(batch, learner.labels)  # row of the window just ended
        result = learner.step([engine.to_pair(s) for s in batch])
        periodic = evaluator.after_step(result, learner.labels)
        if on_step is not None:
            on_step(result, periodic or boundary)
    return evaluator.evaluate(learner.labels)
