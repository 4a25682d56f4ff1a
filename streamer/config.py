"""Every configuration model of streamer, and the only code that reads YAML or the environment.

Each component receives its own section, never the whole object. All models are frozen and
reject unknown keys, so a typo in a config file is an error that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeftConfig(Section):
    mode: Literal["lora", "last_blocks", "full"] = Field(
        "lora", description="Which parameters learn: LoRA adapters, the last N blocks, or all."
    )
    towers: Literal["both", "image", "text"] = Field(
        "both", description="Which towers learn (SIT assumes both)."
    )
    rank: int = Field(4, ge=1, le=256, description="LoRA rank.")
    alpha: float = Field(4.0, gt=0, description="LoRA scale numerator: delta = alpha/rank * B A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA A factor.")
    last_blocks: int = Field(2, ge=1, description="Blocks unfrozen per tower in last_blocks mode.")


class ModelConfig(Section):
    arch: str = Field("streamer-tiny", description="open_clip architecture name.")
    pretrained: str | None = Field(
        None,
        description="open_clip pretrained tag (needs network or cache), a local weights file, "
        "or null for random initialisation.",
    )
    config_dirs: tuple[Path, ...] = Field(
        (), description="Extra directories of open_clip model config JSON files to register."
    )
    cache_dir: Path | None = Field(None, description="Download cache for pretrained tags.")
    peft: PeftConfig = PeftConfig()


class ReplayConfig(Section):
    capacity: int = Field(2000, ge=0, description="Reservoir capacity in samples (0 = no replay).")
    max_bytes: int | None = Field(
        None, ge=1, description="Optional budget on stored image bytes; oldest-slot eviction."
    )
    seed: int = Field(0, description="Seed of the reservoir's random generator.")


class LearnerConfig(Section):
    loss: Literal["sit", "clip", "asymmetric"] = Field("sit", description="Training objective.")
    lr: float = Field(5e-4, gt=0, le=1, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm; null = off.")
    steps_per_batch: int = Field(3, ge=1, le=100, description="Optimizer steps per fresh batch.")
    batch_size: int = Field(64, ge=1, description="Fresh samples per batch.")
    replay_per_step: int = Field(32, ge=0, description="Replayed samples mixed into each step.")
    prompt_template: str = Field(
        "a photo of a {label}.", description="Text of a labelled sample for SIT and evaluation."
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU."
    )
    seed: int = Field(0, description="Seed for torch (LoRA init, dropout).")

    @model_validator(mode="after")
    def _template_has_label(self) -> LearnerConfig:
        if "{label}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{label}'")
        return self


class DetectorConfig(Section):
    kind: Literal["adwin", "page_hinkley"] = Field(
        "page_hinkley", description="river detector for this signal."
    )
    delta: float = Field(
        0.005, gt=0, description="ADWIN confidence, or PageHinkley's tolerated change."
    )
    threshold: float = Field(
        0.2, gt=0, description="PageHinkley alarm threshold, in the signal's own units."
    )
    min_instances: int = Field(10, ge=1, description="PageHinkley warm-up observations.")


def _default_detectors() -> dict[str, DetectorConfig]:
    return {
        "accuracy": DetectorConfig(kind="adwin", delta=0.002),
        "matched_cosine": DetectorConfig(kind="page_hinkley", threshold=0.1),
        "modality_gap": DetectorConfig(kind="page_hinkley", threshold=0.1),
    }


class EvaluationConfig(Section):
    probe_fraction: float = Field(
        0.02, ge=0, lt=1, description="Share of the stream held out as probes (hash of id)."
    )
    probe_per_window: int = Field(200, ge=1, description="Probe samples kept per window.")
    max_windows: int = Field(8, ge=1, le=20, description="Windows tracked (bounds labels).")
    window_seconds: float = Field(
        3600.0, gt=0, description="Time bucket of event time when a record has no task."
    )
    eval_every: int = Field(
        1000, ge=1, description="Trained samples between probe evaluations (A_auc cadence)."
    )
    eval_batch_size: int = Field(256, ge=1, description="Probe samples per forward pass.")
    history: int = Field(5000, ge=10, description="Detector inputs kept for exact restore.")
    detectors: dict[Literal["accuracy", "matched_cosine", "modality_gap"], DetectorConfig] = Field(
        default_factory=_default_detectors, description="Drift detector per signal."
    )


class StreamConfig(Section):
    """An in-process dataset stream (the demo's source until the Kafka daemon lands)."""

    dataset: Literal["fashion-mnist", "digits", "manifest"] = Field(
        "fashion-mnist", description="Which dataset to stream."
    )
    path: Path | None = Field(None, description="IDX directory or JSONL manifest path.")
    tasks: int = Field(5, ge=1, description="Number of class-incremental tasks.")
    classes_per_task: int | None = Field(None, ge=1, description="Default: classes / tasks.")
    blurry: float = Field(0.0, ge=0, le=1, description="Share of each task drawn from others.")
    per_class: int | None = Field(None, ge=1, description="Cap of samples per class.")
    image_format: Literal["PNG", "JPEG"] = Field("PNG", description="Encoding of emitted images.")
    seed: int = Field(0, description="Seed of the class order and shuffles.")


class Settings(Section):
    model: ModelConfig = ModelConfig()
    learner: LearnerConfig = LearnerConfig()
    replay: ReplayConfig = ReplayConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    stream: StreamConfig = StreamConfig()


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read a YAML file (if any), apply nested overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return Settings.model_validate(data)
