"""Frozen data types passed between modules, and the one hash of a record id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

Partition = tuple[str, int]  # (topic, partition)


def id_hash(sample_id: str) -> int:
    """A stable 64-bit number from a record id: the same on every run, rank and replica.

    It decides the probe slice (id_hash / 2**64 < probe_fraction) and sums into the ledger's
    digest of accounted records. Ids are valid UTF-8 (the codec refuses others).
    """
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "big")


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
    """A decoded sample ready for the model: pixels [3, H, W] at model resolution, uint8 (the
    model normalises them on its device) or, from another preprocessing, already floats."""

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
    model_seconds: float = 0.0  # of `seconds`, spent in forward, backward and optimizer


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


def window_of(sample: Sample, window_seconds: float) -> str:
    """A record's window: its task, else the time bucket of its event time."""
    if sample.task is not None:
        return sample.task
    return f"t{int(sample.ts // window_seconds)}"


class DecodeError(ValueError):
    """A record that cannot become a training pair. `reason` is a short, bounded label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
