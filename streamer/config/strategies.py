"""Config of the continual-learning strategies: a regularizer toward a teacher, what is
served (evaluated and exported), and the SIT directions. Off by default: the default
learner is SIT with reservoir replay alone."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from streamer.config.base import Section

Teacher = Literal["base", "ema", "window"]


class RegularizerConfig(Section):
    kind: Literal["none", "structure", "logits", "l2"] = Field(
        "none",
        description="A term added to the loss: structure (Mod-X: KL of the image-text "
        "similarity rows toward the teacher's, on the step's batch), logits (ZSCL: the "
        "image-text logits of reference pairs toward the teacher's), l2 (toward the "
        "teacher's weights).",
    )
    weight: float = Field(1.0, ge=0, description="The term's weight (lambda).")
    teacher: Teacher = Field(
        "base",
        description="base: the frozen base (LoRA: adapters off, free); ema: an exponential "
        "moving average of the trainable state; window: the model as it was when the last "
        "window closed (Mod-X's previous phase).",
    )
    temperature: float = Field(
        2.0,
        gt=0,
        description="logits: the distillation temperature T (ZSCL uses 2). structure: logits "
        "are divided by it too (Mod-X softmaxes raw cosines: T = the logit scale).",
    )
    source: Literal["replay", "manifest"] = Field(
        "replay", description="logits: reference pairs from the replay buffer or a manifest."
    )
    manifest: Path | None = Field(
        None,
        description="logits with source manifest: JSONL of reference pairs (image, label or "
        "text), e.g. data of the base's domain. Keep it apart from evaluation."
        "reference_manifest, or retention measures what was trained on.",
    )
    batch: int = Field(32, ge=1, le=4096, description="logits: reference pairs per update.")
    texts: Literal["reference", "reference+batch"] = Field(
        "reference",
        description="logits: the texts the reference images are scored against. reference: "
        "their own labels; reference+batch: those and the step's texts (the new labels), so "
        "the base's preference of its images for its own labels over the new ones is kept "
        "(ZSCL scores against a large vocabulary for the same reason).",
    )

    @model_validator(mode="after")
    def _manifest_when_needed(self) -> RegularizerConfig:
        if self.kind == "logits" and self.source == "manifest" and self.manifest is None:
            raise ValueError("source manifest needs manifest: the JSONL of reference pairs")
        return self


class RehearseConfig(Section):
    manifest: Path | None = Field(
        None,
        description="JSONL of pairs of the base's domain (image, label or text), rehearsed with "
        "SIT in every update beside the stream and its replay: the base's images are then "
        "contrasted with the new labels and the new images with the base's, which keeps what "
        "the base knew (docs/retention.md). null: nothing of the base's domain is rehearsed. "
        "Keep it apart from evaluation.reference_manifest.",
    )
    per_update: int = Field(
        64,
        ge=0,
        le=4096,
        description="Pairs of the manifest mixed into each update (0: off); each adds to the "
        "update's batch, so to its time, as a replayed pair does.",
    )
    distill: float = Field(
        0.3,
        ge=0,
        description="Weight of ZSCL's logits term toward the frozen base on the rehearsed "
        "pairs, scored against their labels and the update's texts, so the base's images keep "
        "preferring the base's labels to the new ones (0: off). In place of "
        "learner.regularizer, which must then be none.",
    )
