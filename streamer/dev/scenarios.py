"""Misalignment scenarios on real data, for the scenario test and benchmarks/misalignment.py.

A base model is pretrained on Fashion-MNIST (all ten classes). From it, a run tunes one tower
or both with SIT on a shifted stream (scikit-learn's digits: new images, new captions) or on
more Fashion-MNIST (stationary), evaluating every `eval_every` samples exactly as the daemon
does: a held-out slice of the stream plus a pinned reference window of Fashion-MNIST probes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streamer.config import Settings
from streamer.dev import datasets
from streamer.dev.datasets import CAPTION, Item
from streamer.evaluation.evaluate import EvalReport, Evaluator
from streamer.records import Sample, StepResult
from streamer.service.pipeline import build_engine, run_stream

Stream = Literal["shifted", "stationary", "stationary-then-shifted"]
PRETRAIN_SAMPLES = 20_000
REFERENCE_PROBES = 200


@dataclass
class Trace:
    """The misalignment diagnosis at each evaluation of one run (the step-0 one included)."""

    name: str
    threshold: float  # alignment deficit that counts as misaligned
    samples: list[int] = field(default_factory=list)
    deficit: list[float] = field(default_factory=list)  # base-free alignment deficit
    lost: list[float] = field(default_factory=list)  # its part that the base had aligned
    misaligned: list[bool] = field(default_factory=list)  # deficit held over the window
    blame: list[str] = field(default_factory=list)
    image_blame: list[float] = field(default_factory=list)
    text_blame: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # cross-modal top-1 over all probes
    separable: list[float] = field(default_factory=list)  # kNN accuracy of images alone
    image_drift: list[float] = field(default_factory=list)
    text_drift: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)  # accuracy on the pinned window
    alarms: list[int] = field(default_factory=list)  # samples at misalignment detector alarms

    def first_above(self) -> int | None:
        """Trained samples at the first evaluation counted misaligned (the detection delay)."""
        return next((n for n, m in zip(self.samples, self.misaligned, strict=True) if m), None)

    def blame_when_detected(self) -> str | None:
        first = self.first_above()
        return None if first is None else self.blame[self.samples.index(first)]

    def evaluations_above(self) -> int:
        return sum(self.misaligned)


def as_samples(items: list[Item], task: str) -> list[Sample]:
    return [
        Sample(id=f"{task}-{it.key}", image=it.encode("PNG"), text=CAPTION.format(label=it.label),
               label=it.label, task=task)
        for it in items
    ]  # fmt: skip


def fashion(seed: int, classes: Sequence[str] | None = None) -> list[Item]:
    """Fashion-MNIST's training split in a seeded order (only `classes`, when given):
    pretraining takes the first PRETRAIN_SAMPLES, the reference probes the last
    REFERENCE_PROBES."""
    items = datasets.fashion_mnist()
    random.Random(seed).shuffle(items)
    return items if classes is None else [i for i in items if i.label in classes]


def _settings(
    pretrained: Path | None,
    towers: str,
    lr: float,
    eval_every: int,
    seed: int,
    loss: str = "sit",
    replay: int = 0,
):
    return Settings.model_validate({
        "model": {"arch": "streamer-tiny", "pretrained": str(pretrained) if pretrained else None,
                  "peft": {"mode": "full", "towers": towers}},
        "learner": {"loss": loss, "lr": lr, "batch_size": 32, "steps_per_batch": 1,
                    "replay_per_step": 32 if replay else 0, "seed": seed},
        "replay": {"capacity": replay, "seed": seed},
        "evaluation": {"probe_fraction": 0.05, "probe_per_window": 100, "eval_every": eval_every},
    })  # fmt: skip


def pretrain(
    out: Path,
    samples: int = PRETRAIN_SAMPLES,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> Path:
    """A base model that knows Fashion-MNIST (only `classes`, when given), saved as a plain
    open_clip state dict."""
    engine = build_engine(_settings(None, "both", 1e-3, eval_every=10**9, seed=seed))
    run_stream(engine, as_samples(fashion(seed, classes)[:samples], "pretrain"), batch_size=64)
    engine.model.save_merged(out)
    return out


def stream(kind: Stream, seed: int = 0, epochs: int = 2) -> list[Sample]:
    """Shifted: every digit, `epochs` times in a seeded order. Stationary: as many unseen
    Fashion-MNIST samples (the pretraining run never reaches past PRETRAIN_SAMPLES).
    Stationary-then-shifted: the stationary stream, then the shifted one."""
    digits = datasets.digits()
    random.Random(seed).shuffle(digits)
    shifted = as_samples(digits, "shifted") * epochs
    unseen = fashion(seed)[PRETRAIN_SAMPLES : PRETRAIN_SAMPLES + len(shifted)]
    stationary = as_samples(unseen, "stationary")
    return {"shifted": shifted, "stationary": stationary}.get(kind, stationary + shifted)


def reference(seed: int = 0, classes: Sequence[str] | None = None) -> list[Sample]:
    """Fashion-MNIST probes the base model knows, never trained on: window 'reference'."""
    return as_samples(fashion(seed, classes)[-REFERENCE_PROBES:], "reference")


def run(
    base: Path,
    towers: Literal["both", "image", "text"],
    kind: Stream,
    seed: int = 0,
    lr: float = 1e-4,
    loss: Literal["sit", "clip", "asymmetric"] = "sit",
    eval_every: int = 320,
    replay: int = 0,
) -> Trace:
    """Tune `towers` of the base model on a stream with `loss` (and a reservoir of `replay`
    samples, 32 mixed into each update); the diagnosis at every evaluation."""
    settings = _settings(base, towers, lr, eval_every, seed, loss, replay)
    engine = build_engine(settings)
    engine.evaluator = Evaluator(
        settings.evaluation, engine.model, engine.decoder.pixels,
        settings.learner.prompt_template, reference(seed),
    )  # fmt: skip
    name = (f"{towers} towers, {kind}" + ("" if loss == "sit" else f", {loss}")
            + (f", replay {replay}" if replay else ""))  # fmt: skip
    trace = Trace(name, settings.evaluation.misalignment_threshold)

    def record(_: StepResult, report: EvalReport | None) -> None:
        if report is None or report.diagnosis is None:
            return
        d, a = report.diagnosis, report.alignment
        trace.samples.append(report.samples)
        trace.deficit.append(d.deficit)
        trace.lost.append(d.lost)
        trace.misaligned.append(report.misaligned)
        trace.blame.append(d.blame)
        trace.image_blame.append(d.image_blame)
        trace.text_blame.append(d.text_blame)
        trace.accuracy.append(d.swap.now.accuracy)
        trace.separable.append(d.separable)
        trace.image_drift.append(a["image_drift"])
        trace.text_drift.append(a["text_drift"])
        trace.reference.append(report.accuracy.get("reference", float("nan")))
        if "misalignment" in report.alarms:
            trace.alarms.append(report.samples)

    run_stream(engine, stream(kind, seed), settings.learner.batch_size, record)
    return trace
