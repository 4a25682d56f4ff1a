"""Assembling the learning engine from a config, and the in-process test-then-train loop."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from streamer import datasets
from streamer.config import Settings
from streamer.datasets import CAPTION
from streamer.decode import DEFAULT_LIMITS, ImageLimits, decode_image
from streamer.distributed import World, local_device
from streamer.evaluate import EvalReport, Evaluator
from streamer.learner import Learner, resolve_device
from streamer.model import ClipModel
from streamer.records import Pair, Sample, StepResult
from streamer.replay import ReplayBuffer


@dataclass(frozen=True)
class Outcome:
    result: StepResult | None  # None when the whole batch was held out as probes
    report: EvalReport | None  # an evaluation, when one was due
    probes: int


@dataclass
class Engine:
    model: ClipModel
    replay: ReplayBuffer
    learner: Learner
    evaluator: Evaluator

    def to_pair(self, sample: Sample) -> Pair:
        return pair_of(self.model, sample)

    def learn(self, pairs: Sequence[Pair], step_anyway: bool = False) -> Outcome:
        """Hold out the probe slice; test-then-train on the rest; evaluate when due.

        `step_anyway`: with nothing to train, still join the step of the other ranks.
        """
        train = []
        for pair in pairs:
            if self.evaluator.is_probe(pair.sample):
                self.evaluator.add_probe(pair.sample)
            else:
                train.append(pair)
        if not train:
            if step_anyway:
                self.learner.idle_step()
            return Outcome(None, None, probes=len(pairs))
        labels = self.learner.labels
        boundary = self.evaluator.before_step([p.sample for p in train], labels)  # row closes
        result = self.learner.step(train)
        periodic = self.evaluator.after_step(result, self.learner.labels)
        return Outcome(result, periodic or boundary, probes=len(pairs) - len(train))

    def state_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "replay": self.replay.state_dict(),
            "evaluator": self.evaluator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        if state["replay"] is not None:  # None: a rank new to the job starts these empty
            self.replay.load_state_dict(state["replay"])
        if state["evaluator"] is not None:
            self.evaluator.load_state_dict(state["evaluator"])


def build_engine(settings: Settings, world: World | None = None) -> Engine:
    world = world or World()
    device = local_device(resolve_device(settings.learner.device), world.local_rank)
    model = ClipModel(settings.model, device, seed=settings.learner.seed)
    replay = ReplayBuffer(
        settings.replay.capacity, settings.replay.max_bytes, settings.replay.seed + world.rank
    )  # each rank's reservoir draws differently
    learner = Learner(model, replay, settings.learner, partial(pair_of, model), world=world,
                      gather_features=settings.distributed.gather_features)  # fmt: skip
    evaluator = Evaluator(
        settings.evaluation, model, partial(pixels_of, model), settings.learner.prompt_template,
        reference_probes(settings.evaluation.reference_manifest),
    )  # fmt: skip
    return Engine(model, replay, learner, evaluator)


def reference_probes(manifest: Path | None) -> list[Sample]:
    """The fixed reference probe set of a JSONL manifest, as samples of window 'reference'."""
    if manifest is None:
        return []
    return [
        Sample(id=f"reference-{item.key}", image=item.encode("PNG"),
               text=item.text or CAPTION.format(label=item.label), label=item.label,
               task="reference")
        for item in datasets.manifest(manifest)
    ]  # fmt: skip


def pixels_of(
    model: ClipModel, sample: Sample, limits: ImageLimits = DEFAULT_LIMITS
) -> torch.Tensor:
    """Encoded image -> the model's input tensor [3, H, W]."""
    return model.pixels(decode_image(sample.image, limits))


def pair_of(model: ClipModel, sample: Sample, limits: ImageLimits = DEFAULT_LIMITS) -> Pair:
    return Pair(sample, pixels_of(model, sample, limits))


def run_stream(
    engine: Engine,
    samples: Iterable[Sample],
    batch_size: int,
    on_step: Callable[[StepResult, EvalReport | None], None] | None = None,
) -> EvalReport:
    """The prequential loop over an in-process stream; a final evaluation at the end."""
    iterator = iter(samples)
    while chunk := list(itertools.islice(iterator, batch_size)):
        outcome = engine.learn([engine.to_pair(s) for s in chunk])
        if on_step is not None and outcome.result is not None:
            on_step(outcome.result, outcome.report)
    return engine.evaluator.evaluate(engine.learner.labels)
