"""Config of what learns and how it is evaluated: model, PEFT, learner, replay, evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from streamer.config.base import Section
from streamer.config.strategies import RegularizerConfig, RehearseConfig

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


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
    peft: PeftConfig = Field(PeftConfig(), description="Which parameters learn, and how.")

    @property
    def weights_file(self) -> Path | None:
        """`pretrained` when it names a local weights file rather than an open_clip tag."""
        name = self.pretrained
        if name and (os.sep in name or name.endswith(WEIGHT_SUFFIXES) or Path(name).exists()):
            return Path(name)
        return None


class ReplayConfig(Section):
    capacity: int = Field(2000, ge=0, description="Reservoir capacity in samples (0 = no replay).")
    max_bytes: int | None = Field(
        None,
        ge=1,
        description="Optional budget on held image (or pixel) and text bytes (the reservoir "
        "stays uniform: it holds fewer samples).",
    )
    store: Literal["encoded", "pixels"] = Field(
        "encoded",
        description="encoded: images as received (small; a replayed one is decoded again on "
        "the training thread each draw); pixels: uint8 tensors at model resolution (147 KiB "
        "at 224 px), no decoding when drawn: the choice for a GPU.",
    )
    on_device: bool = Field(
        False, description="pixels store: keep the tensors on the model's device (GPU memory)."
    )
    policy: Literal["reservoir", "per_window", "recent_and_reservoir"] = Field(
        "reservoir",
        description="reservoir: uniform over the stream; per_window: an equal share of "
        "capacity and bytes per window (TiC-CLIP's Equal); recent_and_reservoir: a share for "
        "the current window, the rest uniform over the stream (TiC-CLIP's Exp flavour).",
    )
    recent_share: float = Field(
        0.5, gt=0, lt=1, description="recent_and_reservoir: the current window's share."
    )
    max_windows: int = Field(
        16, ge=1, le=1000, description="per_window: windows held (the oldest leave first)."
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
    max_labels: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Label prompts kept as scoring candidates (prequential accuracy, the "
        "asymmetric loss, probe accuracy): the most recently seen ones; older labels leave "
        "the set. Bounds step time and memory on streams with many distinct labels.",
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU."
    )
    seed: int = Field(0, description="Seed for torch (LoRA init, dropout).")
    compile: Literal["auto", "off", "on", "reduce-overhead"] = Field(
        "auto",
        description="torch.compile each transformer block: on (inductor), reduce-overhead "
        "(inductor with CUDA graphs; CUDA only), off, or auto = off for now (slower on a CPU; "
        "on a GPU not yet measured). The first steps pay the compilation; restart needed.",
    )
    sit_directions: Literal["both", "image_to_text"] = Field(
        "both",
        description="sit: image->text and text->image (ours), or image->text only (the paper's).",
    )
    regularizer: RegularizerConfig = Field(
        RegularizerConfig(), description="A term toward a teacher, added to the loss."
    )
    rehearse: RehearseConfig = Field(
        RehearseConfig(), description="Rehearsal of the base's domain in every update."
    )
    ema_decay: float = Field(
        0.99, gt=0, lt=1, description="Decay of the EMA of the trainable state (per update)."
    )
    serve: Literal["student", "ema", "wise"] = Field(
        "student",
        description="What is evaluated (and exported): the trained weights, their EMA (ZSCL's "
        "weight averaging), or a WiSE-FT blend with the base.",
    )
    wise_alpha: float = Field(
        0.5, ge=0, le=1, description="serve wise: base + alpha * (trained - base)."
    )

    @property
    def keeps_ema(self) -> bool:
        return self.serve == "ema" or (
            self.regularizer.kind != "none" and self.regularizer.teacher == "ema"
        )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, value: object) -> object:
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _template_has_label(self) -> LearnerConfig:
        if "{label}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{label}'")
        try:
            self.prompt_template.format(label="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt_template: only {{label}} may be filled in ({exc})") from exc
        return self

    @model_validator(mode="after")
    def _one_regularizer(self) -> LearnerConfig:
        distils = self.rehearse.manifest is not None and self.rehearse.distill > 0
        if distils and self.regularizer.kind != "none":
            raise ValueError("rehearse.distill: the rehearsal's logits term and regularizer "
                             f"{self.regularizer.kind!r} are both on; set rehearse.distill: 0 "
                             "to use the regularizer, or regularizer.kind: none")  # fmt: skip
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
    mode: Literal["up", "down", "both"] = Field(
        "both", description="PageHinkley: alarm on increases, decreases, or both."
    )


DriftSignal = Literal["accuracy", "matched_cosine", "modality_gap", "misalignment"]
DRIFT_SIGNALS: tuple[str, ...] = get_args(DriftSignal)


def _default_detectors() -> dict[str, DetectorConfig]:
    return {
        "accuracy": DetectorConfig(kind="adwin", delta=0.002),
        "matched_cosine": DetectorConfig(kind="page_hinkley", threshold=0.1),
        "modality_gap": DetectorConfig(kind="page_hinkley", threshold=0.1),
        "misalignment": DetectorConfig(
            kind="page_hinkley", threshold=0.2, delta=0.02, min_instances=3, mode="up"
        ),
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
    reference_manifest: Path | None = Field(
        None,
        description="JSONL manifest of a fixed probe set the model must keep (window "
        "'reference', never dropped).",
    )
    eval_every: int = Field(
        1000, ge=1, description="Trained samples between probe evaluations (A_auc cadence)."
    )
    eval_batch_size: int = Field(256, ge=1, description="Probe samples per forward pass.")
    history: int = Field(5000, ge=10, description="Detector inputs kept for exact restore.")
    misalignment_threshold: float = Field(
        0.15,
        gt=0,
        le=1,
        description="Alignment deficit (0-1: how far cross-modal top-1 falls below "
        "leave-one-out kNN of the images, mean over classes) above which the towers count as "
        "misaligned: alert StreamerMisaligned.",
    )
    misalignment_window: int = Field(
        4,
        ge=1,
        le=100,
        description="Evaluations in a row the deficit must stay over the threshold.",
    )
    min_probes: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Probes a window needs for its accuracy to count: cells on fewer enter no "
        "mean (A_last, A_auc, forgetting, BWT, FWT) and show blank.",
    )
    max_classes: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Classes (labels) kept for per-class forgetting: the most recently evaluated.",
    )
    min_class_probes: int = Field(
        5,
        ge=1,
        le=10_000,
        description="Probes a class needs in an evaluation for its accuracy to count in "
        "per-class forgetting.",
    )
    blame_margin: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Accuracy that swapping one tower back to the base must recover, and lead "
        "the other tower's recovery by, for the blame to name that tower.",
    )
    collapse_threshold: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Image-tower collapse: separability (leave-one-out kNN of the probe images "
        "by class) lost against the base's on the same probes, above which the tower counts as "
        "collapsed, whether or not alignment falls with it: alert StreamerImageTowerCollapsed.",
    )
    attribution_every: int = Field(
        10,
        ge=0,
        description="Evaluations between per-block attributions (which blocks moved; with "
        "LoRA, the accuracy with each block's adapters off: one forward pass per block). "
        "0 = never.",
    )
    knn_k: int = Field(
        5,
        ge=1,
        le=100,
        description="Neighbours of the leave-one-out kNN measuring what the image embeddings "
        "alone separate.",
    )
    detectors: dict[DriftSignal, DetectorConfig] = Field(
        default_factory=_default_detectors, description="Drift detector per signal."
    )

    @model_validator(mode="after")
    def _windows_can_be_measured(self) -> EvaluationConfig:
        if self.min_probes > self.probe_per_window:
            raise ValueError(
                f"min_probes ({self.min_probes}) is more than probe_per_window "
                f"({self.probe_per_window}): no window could ever be measured"
            )
        return self
