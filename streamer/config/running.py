"""Config of the running daemon: checkpoints, signals and retries, scale-out, metrics, logs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from streamer.config.base import Section


class CheckpointConfig(Section):
    dir: Path = Field(Path("checkpoints"), description="Checkpoint directory (a volume).")
    every_steps: int = Field(200, ge=1, description="Checkpoint after this many steps...")
    every_seconds: float = Field(300.0, gt=0, description="...or this many seconds.")
    keep: int = Field(3, ge=1, description="Checkpoints kept.")
    background: bool = Field(
        True,
        description="Write, fsync and commit on a writer thread: the training thread only "
        "copies the state at a step boundary. At most one write is in flight; a checkpoint "
        "falling due meanwhile waits for the next boundary. Single-process daemons only "
        "(under torchrun the write stays on the training thread).",
    )
    keep_published: bool = Field(
        True, description="Also keep every checkpoint that was published: rollback targets."
    )


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
