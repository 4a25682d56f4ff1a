"""Every configuration model of streamer, and how a config is loaded (YAML, environment,
overrides).

Each component receives its own section, never the whole object. All models are frozen and
reject unknown keys, so a typo in a config file is an error that names the field.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pydantic import model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from streamer.config.base import Section
from streamer.config.learning import (
    DRIFT_SIGNALS,
    DetectorConfig,
    DriftSignal,
    EvaluationConfig,
    LearnerConfig,
    ModelConfig,
    PeftConfig,
    ReplayConfig,
)
from streamer.config.publishing import AutoRollbackConfig, GateConfig, PublishConfig
from streamer.config.records import DeadLetterConfig, KafkaConfig, RecordConfig, StreamConfig
from streamer.config.running import (
    CheckpointConfig,
    DaemonConfig,
    DistributedConfig,
    LoggingConfig,
    MetricsConfig,
)

__all__ = [
    "DRIFT_SIGNALS", "AutoRollbackConfig", "CheckpointConfig", "DaemonConfig",
    "DeadLetterConfig", "DetectorConfig", "DistributedConfig", "DriftSignal", "EvaluationConfig",
    "GateConfig", "KafkaConfig", "LearnerConfig", "LoggingConfig", "MetricsConfig",
    "ModelConfig", "PeftConfig", "PublishConfig", "RecordConfig", "ReplayConfig", "Section",
    "Settings", "StreamConfig", "config_hash", "load_settings",
]  # fmt: skip


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
    publish: PublishConfig = PublishConfig()

    @model_validator(mode="after")
    def _rehearsal_apart_from_reference(self) -> Settings:
        rehearse = self.learner.rehearse
        if (
            rehearse.manifest is not None
            and rehearse.manifest == self.evaluation.reference_manifest
        ):
            raise ValueError("learner.rehearse.manifest is evaluation.reference_manifest: "
                             "retention would measure what is trained on")  # fmt: skip
        return self


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
