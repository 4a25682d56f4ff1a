"""Frozen data types passed between modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Sample:
    """One image-text pair as received: the image stays encoded (JPEG/PNG bytes)."""

    id: str
    image: bytes
    text: str
    label: str | None = None
    task: str | None = None
    ts: float = 0.0  # event time, seconds since the epoch

    def prompt(self, template: str) -> str:
        """The text SIT scores: the label prompt when labelled, else the caption."""
        return template.format(label=self.label) if self.label is not None else self.text


@dataclass(frozen=True, slots=True)
class Pair:
    """A decoded sample ready for the model: pixels [3, H, W] after the model's preprocessing."""

    sample: Sample
    pixels: torch.Tensor


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one learner step did. Prequential figures score the fresh batch before learning."""

    step: int  # learner steps taken so far, this one included
    samples: int  # fresh samples in this step
    replayed: int  # replayed samples mixed into each optimizer step
    loss: float  # mean training loss over the optimizer steps that were applied
    prequential_loss: float
    prequential_accuracy: float
    updates: int  # optimizer steps applied
    skipped_nonfinite: int  # optimizer steps skipped for a non-finite loss or gradient
    seconds: float
    lr: float
    logit_scale: float


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A Kafka record as fetched, before any validation."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0
