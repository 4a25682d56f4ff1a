"""Assembling the learning engine from a config, and the in-process test-then-train loop."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.config import Settings
from streamer.config.strategies import RegularizerConfig
from streamer.evaluation.evaluate import REFERENCE, EvalReport, Evaluator
from streamer.intake.decode import Decoder
from streamer.intake.manifest import ManifestError, read_manifest
from streamer.learning.distributed import World, local_device, resolve_device
from streamer.learning.learner import Learner
from streamer.learning.model import ClipModel
from streamer.learning.rehearsal import Rehearsal
from streamer.learning.replay import ReplayBuffer
from streamer.learning.replay_policies import build_replay
from streamer.learning.strategies import Regularizer
from streamer.learning.teachers import Teachers, View
from streamer.records import DecodeError, Pair, Sample, StepResult, window_of


@dataclass(frozen=True)
class Outcome:
    result: StepResult | None  # None when the whole batch was held out as probes
    report: EvalReport | None  # an evaluation, when one was due
    probes: int


@dataclass
class Engine:
    model: ClipModel
    decoder: Decoder
    replay: ReplayBuffer
    learner: Learner
    evaluator: Evaluator
    teachers: Teachers | None = None  # EMA, window snapshots, the served view
    serve: View = "student"  # what is evaluated: the trained weights, their EMA, a blend
    wise_alpha: float = 1.0

    def to_pair(self, sample: Sample) -> Pair:
        return self.decoder.pair(sample)

    def serving(self):
        """The model as it is evaluated (and exported): trained, EMA or WiSE-FT."""
        if self.teachers is None or self.serve == "student":
            return nullcontext()
        return self.teachers.view(self.serve, self.wise_alpha)

    def evaluate(self) -> EvalReport:
        """An evaluation out of the schedule, of the served model."""
        with self.serving():
            return self.evaluator.evaluate(self.learner.labels)

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
        with self.serving():
            boundary = self.evaluator.before_step([p.sample for p in train], labels)  # closes
        if boundary is not None and self.teachers is not None:
            self.teachers.window_closed()  # the previous-phase teacher
        result = self.learner.step(train)
        with self.serving():
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
    learning, template = settings.learner, settings.learner.prompt_template
    decoder = Decoder(settings.kafka.codec, settings.records, model.pixels, model.tokenizer,
                      template, model.image_size)  # fmt: skip
    seconds = settings.evaluation.window_seconds
    replay = build_replay(settings.replay, settings.replay.seed + world.rank,  # each its own
                          lambda s: window_of(s, seconds), device)  # fmt: skip
    teachers = Teachers(model, learning.ema_decay, learning.keeps_ema)
    rehearsed = reference_probes(learning.rehearse.manifest, decoder, template, task="rehearse")
    rehearsal = (Rehearsal([decoder.pair(s) for s in rehearsed], learning.seed + world.rank)
                 if rehearsed else None)  # fmt: skip
    regularizer = _regularizer(settings, model, teachers, replay, decoder, rehearsal)
    learner = Learner(model, replay, learning, decoder.pair, world=world,
                      gather_features=settings.distributed.gather_features,
                      teachers=teachers if learning.keeps_ema or regularizer else None,
                      regularizer=regularizer, rehearsal=rehearsal)  # fmt: skip
    reference = reference_probes(settings.evaluation.reference_manifest, decoder, template)
    evaluator = Evaluator(settings.evaluation, model, decoder.pixels, template, reference)
    return Engine(model, decoder, replay, learner, evaluator, teachers, learning.serve,
                  learning.wise_alpha)  # fmt: skip


def _regularizer(
    settings: Settings, model, teachers, replay, decoder, rehearsal: Rehearsal | None
) -> Regularizer | None:
    cfg, distill = settings.learner.regularizer, settings.learner.rehearse.distill
    references = None
    if cfg.kind == "none" and rehearsal is not None and distill > 0:  # ZSCL on the rehearsed
        cfg = RegularizerConfig(kind="logits", teacher="base", texts="reference+batch",
                                weight=distill)  # fmt: skip
        references = _drawn_from(rehearsal.pairs)
    elif cfg.kind == "none":
        return None
    elif cfg.kind == "logits" and cfg.source == "manifest":
        references = _drawn_from([decoder.pair(s) for s in reference_probes(
            cfg.manifest, decoder, settings.learner.prompt_template, task="distill")])  # fmt: skip
    elif cfg.kind == "logits":
        references = lambda k, rng: [as_pair(s, decoder) for s in replay.sample(k)]  # noqa: E731
    return Regularizer(cfg, model, teachers, references, settings.learner.prompt_template,
                       settings.learner.seed)  # fmt: skip


def _drawn_from(pairs: list[Pair]):
    """Reference pairs for the logits term: k distinct ones of a fixed set, drawn with rng."""
    return lambda k, rng: rng.sample(pairs, min(k, len(pairs)))


def as_pair(entry: Sample | Pair, decoder: Decoder) -> Pair:
    """A replay resident as the model's input: a `pixels` one as held, else decoded."""
    return entry if isinstance(entry, Pair) else decoder.pair(entry)


def reference_probes(
    manifest: Path | None, decoder: Decoder, template: str, task: str = REFERENCE
) -> list[Sample]:
    """The fixed reference probe set of a JSONL manifest, as samples of window 'reference';
    every image is decoded once here, so a bad one stops start-up with its line named."""
    if manifest is None:
        return []
    samples = []
    for entry in read_manifest(manifest):
        try:
            image = entry.image.read_bytes()
        except OSError as exc:
            raise ManifestError(f"{manifest}: {entry.key}: {exc}") from exc
        text = entry.text or (template.format(label=entry.label) if entry.label else None)
        if not text:
            raise ManifestError(f"{manifest}: {entry.key}: needs a text or a label")
        sample = Sample(id=f"{task}-{entry.key}", image=image, text=text, label=entry.label,
                        task=task)  # fmt: skip
        try:
            decoder.pixels(sample)
        except DecodeError as exc:
            raise ManifestError(f"{manifest}: {entry.key}: {exc}") from exc
        samples.append(sample)
    return samples


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
    return engine.evaluate()
