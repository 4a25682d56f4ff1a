"""Every configuration model of streamer, and how a config is loaded (YAML, environment,
overrides).

Each component receives its own section, never the whole object. All models are frozen and
reject unknown keys, so a typo in a config file is an error that names the field.
"""

from __future__ import annotations

import hashlib
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


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
    peft: PeftConfig = Field(PeftConfig(), description="Which parameters learn, and how.")


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

    @model_validator(mode="after")
    def _template_has_label(self) -> LearnerConfig:
        if "{label}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{label}'")
        try:
            self.prompt_template.format(label="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt_template: only {{label}} may be filled in ({exc})") from exc
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
        description="Misalignment score (nats) above which the towers count as drifting "
        "apart: alert StreamerMisaligned.",
    )
    misalignment_window: int = Field(
        4,
        ge=1,
        le=100,
        description="Evaluations a one-sided drift must persist to count: the score is the "
        "least instant score over this many, so the transient of joint training right after a "
        "shift (the image tower moves first) does not count.",
    )
    detectors: dict[DriftSignal, DetectorConfig] = Field(
        default_factory=_default_detectors, description="Drift detector per signal."
    )


class StreamConfig(Section):
    """A dataset stream for the development harness: `streamer produce`, `simulate`, the demo."""

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


class KafkaConfig(Section):
    bootstrap_servers: tuple[str, ...] = Field(
        ("127.0.0.1:9092",), min_length=1, description="Broker host:port list."
    )
    topic: str = Field("streamer-pairs", min_length=1, description="Topic of image-text pairs.")
    group_id: str = Field("streamer", min_length=1, description="Consumer group.")
    client_id: str = Field("streamer", description="Client id shown by the broker.")
    dlq_topic: str | None = Field(None, description="Dead-letter topic; default <topic>.dlq.")
    codec: Literal["json", "raw"] = Field("json", description="Record value format.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where to start without a committed offset, or when out of range."
    )
    max_poll_interval_ms: int = Field(
        300_000, ge=1_000, description="Group eviction limit between polls (also rebalance time)."
    )
    session_timeout_ms: int = Field(45_000, ge=1_000, description="Heartbeat session timeout.")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="Heartbeat interval.")
    queue_records: int = Field(
        2_048, ge=1, description="Decoded records buffered ahead of training; polling pauses above."
    )
    linger_ms: int = Field(200, ge=0, description="Wait for a full batch at most this long.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Transport security."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism."
    )
    sasl_username: str | None = Field(None, description="SASL user.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: FilePath | None = Field(None, description="CA bundle (PEM) for SSL.")
    ssl_certfile: FilePath | None = Field(
        None, description="Client certificate (PEM) for mutual TLS; may also hold the key."
    )
    ssl_keyfile: FilePath | None = Field(None, description="Client private key (PEM), mTLS.")
    ssl_password: SecretStr | None = Field(
        None, description="Password of the client key (never logged)."
    )
    ssl_check_hostname: bool = Field(
        True, description="Check that the broker's certificate names the host connected to."
    )
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=249,
        description="Static group membership (KIP-345): a stable id per member (e.g. the pod "
        "name), so a restart within session_timeout_ms does not rebalance the group.",
    )
    isolation_level: Literal["read_uncommitted", "read_committed"] = Field(
        "read_uncommitted",
        description="read_committed: only records of committed transactions (transactional "
        "producers); aborted ones are never trained.",
    )
    poll_error_budget_seconds: float = Field(
        120.0,
        gt=0,
        description="A poll error repeating without a successful poll for this long fails "
        "the daemon (health reports it at once), naming the cause: it never loops quietly.",
    )

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic}.dlq"

    @model_validator(mode="after")
    def _security_settings_fit_the_protocol(self) -> KafkaConfig:
        ssl = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol.startswith("SASL_")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if getattr(self, name) is not None and not ssl:
                raise ValueError(f"{name} needs security_protocol SSL or SASL_SSL")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username):
            raise ValueError(f"{self.security_protocol} needs sasl_mechanism and sasl_username")
        if self.sasl_mechanism is not None and not sasl:
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        instance = self.group_instance_id
        if instance is not None and (instance in (".", "..") or not _INSTANCE_ID.match(instance)):
            raise ValueError("group_instance_id: only ASCII letters, digits, '.', '_' and '-'")
        return self


_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]+$")  # Kafka's rule for group.instance.id


class RecordConfig(Section):
    max_record_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Largest record value.")
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest encoded image.")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest width x height (bombs).")
    max_aspect_ratio: float = Field(
        20.0,
        ge=1,
        description="Longest side over shortest: a 1 x 40M image would become billions of "
        "pixels when resized to the model's input.",
    )
    formats: tuple[Literal["JPEG", "PNG", "WEBP"], ...] = Field(
        ("JPEG", "PNG", "WEBP"), min_length=1, description="Accepted image formats."
    )
    max_text_chars: int = Field(1_000, ge=1, description="Longest caption.")
    image_root: Path | None = Field(
        None, description="Directory that file:// image_uri values must lie under (else refused)."
    )
    max_event_time_skew_seconds: float = Field(
        10 * 365 * 86400.0,
        gt=0,
        description="An event time `ts` further than this from the record's broker timestamp "
        "is refused (reason event_time_out_of_range), as is a non-finite one.",
    )


class DeadLetterConfig(Section):
    max_share: float = Field(
        0.5, gt=0, le=1, description="Stop when more than this share of a window is invalid."
    )
    window: int = Field(1_000, ge=10, description="Records in the share's sliding window.")


class CheckpointConfig(Section):
    dir: Path = Field(Path("checkpoints"), description="Checkpoint directory (a volume).")
    every_steps: int = Field(200, ge=1, description="Checkpoint after this many steps...")
    every_seconds: float = Field(300.0, gt=0, description="...or this many seconds.")
    keep: int = Field(3, ge=1, description="Checkpoints kept.")


class DaemonConfig(Section):
    grace_seconds: float = Field(
        60.0, gt=0, description="Time to finish a step, checkpoint and commit after SIGTERM."
    )
    retry_backoff_seconds: float = Field(1.0, gt=0, description="First broker retry delay.")
    retry_backoff_max_seconds: float = Field(30.0, gt=0, description="Longest retry delay.")


class DistributedConfig(Section):
    """Scale-out under torchrun; ignored when the process is not launched distributed."""

    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="Collective backend: auto = nccl on CUDA, gloo on CPU."
    )
    timeout_seconds: float = Field(
        600.0, gt=0, description="A collective waiting longer than this fails the job (restart)."
    )
    gather_features: bool = Field(
        False,
        description="SIT over the global batch: every rank's features are gathered, so "
        "negatives and shared positives span all ranks (exact gradient of the global loss).",
    )


class MetricsConfig(Section):
    host: str = Field("0.0.0.0", description="Address of /metrics, /healthz, /readyz.")
    port: int = Field(
        8439, ge=0, le=65535,
        description="Port (0 = any free port); under torchrun, local rank r serves port + r.",
    )  # fmt: skip
    stall_seconds: float = Field(
        300.0,
        gt=0,
        description="/healthz fails after this long without a poll, or without "
        "a step while records wait.",
    )


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON lines unless writing to a terminal."
    )
    record_error_interval_seconds: float = Field(
        10.0, gt=0, description="Per-record problems: one line per reason per interval."
    )


_YAML_FILE: ContextVar[Path | None] = ContextVar("yaml_file", default=None)


class Settings(BaseSettings):
    """The whole config. Sources, later ones winning: YAML file, environment
    (STREAMER_SECTION__FIELD), command-line overrides."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix="STREAMER_", env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )  # fmt: skip

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _YAML_FILE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    kafka: KafkaConfig = KafkaConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    records: RecordConfig = RecordConfig()
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    daemon: DaemonConfig = DaemonConfig()
    distributed: DistributedConfig = DistributedConfig()
    model: ModelConfig = ModelConfig()
    learner: LearnerConfig = LearnerConfig()
    replay: ReplayConfig = ReplayConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    stream: StreamConfig = StreamConfig()


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """The validated config: YAML file, then STREAMER_* environment, then `section.field`
    overrides. Raises ValidationError listing every problem with its field path."""
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")  # a missing file is an error, not {}
        if not isinstance(yaml.safe_load(text) or {}, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping of sections")
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        node = nested
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    token = _YAML_FILE.set(Path(path) if path is not None else None)
    try:
        return Settings(**nested)
    finally:
        _YAML_FILE.reset(token)


def config_hash(settings: Settings) -> str:
    """A short, stable fingerprint of the effective config (secrets are masked in the dump)."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]
