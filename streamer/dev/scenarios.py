"""Misalignment scenarios on real data, for the scenario test and benchmarks/misalignment.py.

A base model is pretrained on Fashion-MNIST (all ten classes). From it, a run tunes one tower
or both with SIT on a shifted stream (scikit-learn's digits: new images, new captions) or on
more Fashion-MNIST (stationary), evaluating every `eval_every` samples exactly as the daemon
does: a held-out slice of the stream plus a pinned reference window of Fashion-MNIST probes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from streamer.config import Settings
from streamer.dev import datasets
from streamer.dev.datasets import CAPTION, Item
from streamer.evaluate import EvalReport, Evaluator
from streamer.pipeline import build_engine, run_stream
from streamer.records import Sample, StepResult

Stream = Literal["shifted", "stationary", "stationary-then-shifted"]
PRETRAIN_SAMPLES = 20_000
REFERENCE_PROBES = 200


@dataclass
class Trace:
    """The misalignment score and its parts at each evaluation of one run."""

    name: str
    threshold: float
    samples: list[int] = field(default_factory=list)
    misalignment: list[float] = field(default_factory=list)  # held over the window
    instant: list[float] = field(default_factory=list)
    image_drift: list[float] = field(default_factory=list)
    text_drift: list[float] = field(default_factory=list)
    structure_kl: list[float] = field(default_factory=list)
    alarms: list[int] = field(default_factory=list)  # samples at misalignment detector alarms

    def first_above(self) -> int | None:
        """Trained samples at the first evaluation over the threshold (the detection delay)."""
        return next(
            (n for n, s in zip(self.samples, self.misalignment, strict=True) if s > self.threshold),
            None,
        )

    def evaluations_above(self) -> int:
        return sum(s > self.threshold for s in self.misalignment)


def _samples(items: list[Item], task: str) -> list[Sample]:
    return [
        Sample(id=f"{task}-{it.key}", image=it.encode("PNG"), text=CAPTION.format(label=it.label),
               label=it.label, task=task)
        for it in items
    ]  # fmt: skip


def _fashion(seed: int) -> list[Item]:
    items = datasets.fashion_mnist()
    random.Random(seed).shuffle(items)
    return items


def _settings(pretrained: Path | None, towers: str, lr: float, eval_every: int, seed: int):
    return Settings.model_validate({
        "model": {"arch": "streamer-tiny", "pretrained": str(pretrained) if pretrained else None,
                  "peft": {"mode": "full", "towers": towers}},
        "learner": {"loss": "sit", "lr": lr, "batch_size": 32, "steps_per_batch": 1,
                    "replay_per_step": 0, "seed": seed},
        "replay": {"capacity": 0},
        "evaluation": {"probe_fraction": 0.05, "probe_per_window": 100, "eval_every": eval_every},
    })  # fmt: skip


def pretrain(out: Path, samples: int = PRETRAIN_SAMPLES, seed: int = 0) -> Path:
    """A base model that knows Fashion-MNIST, saved as a plain open_clip state dict."""
    engine = build_engine(_settings(None, "both", 1e-3, eval_every=10**9, seed=seed))
    run_stream(engine, _samples(_fashion(seed)[:samples], "pretrain"), batch_size=64)
    engine.model.save_merged(out)
    return out


def stream(kind: Stream, seed: int = 0, epochs: int = 2) -> list[Sample]:
    """Shifted: every digit, `epochs` times in a seeded order. Stationary: as many unseen
    Fashion-MNIST samples (the pretraining run never reaches past PRETRAIN_SAMPLES).
    Stationary-then-shifted: the stationary stream, then the shifted one."""
    digits = datasets.digits()
    random.Random(seed).shuffle(digits)
    shifted = _samples(digits, "shifted") * epochs
    unseen = _fashion(seed)[PRETRAIN_SAMPLES : PRETRAIN_SAMPLES + len(shifted)]
    stationary = _samples(unseen, "stationary")
    return {"shifted": shifted, "stationary": stationary}.get(kind, stationary + shifted)


def reference(seed: int = 0) -> list[Sample]:
    """Fashion-MNIST probes the base model knows, never trained on: window 'reference'."""
    return _samples(_fashion(seed)[-REFERENCE_PROBES:], "reference")


def run(
    base: Path,
    towers: Literal["both", "image", "text"],
    kind: Stream,
    seed: int = 0,
    lr: float = 1e-4,
    eval_every: int = 320,
) -> Trace:
    """Tune `towers` of the base model on a stream; the score at every evaluation."""
    settings = _settings(base, towers, lr, eval_every, seed)
    engine = build_engine(settings)
    engine.evaluator = Evaluator(
        settings.evaluation, engine.model, engine.decoder.pixels,
        settings.learner.prompt_template, reference(seed),
    )  # fmt: skip
    trace = Trace(f"{towers} towers, {kind}", settings.evaluation.misalignment_threshold)

    def record(_: StepResult, report: EvalReport | None) -> None:
        if report is None or not report.alignment:
            return
        a = report.alignment
        trace.samples.append(report.samples)
        trace.misalignment.append(a["misalignment"])
        trace.instant.append(a["misalignment_instant"])
        trace.image_drift.append(a["image_drift"])
        trace.text_drift.append(a["text_drift"])
        trace.structure_kl.append(a["structure_kl"])
        if "misalignment" in report.alarms:
            trace.alarms.append(report.samples)

    run_stream(engine, stream(kind, seed), settings.learner.batch_size, record)
    return trace
