"""Config of publishing: where versions go, how often, the quality gate, auto-rollback."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from streamer.config.base import Section


class GateConfig(Section):
    """A version is published only if every check passes; each failure has a reason."""

    min_retention_ratio: float = Field(
        0.9, ge=0, le=1,
        description="Reference accuracy now must be at least this fraction of the base's "
        "(skipped without a reference probe set unless require_reference).",
    )  # fmt: skip
    require_reference: bool = Field(
        False, description="Refuse a version whose retention was not measured."
    )
    allow_misaligned: bool = Field(False, description="Publish even with a misalignment alarm.")
    min_window_accuracy: float = Field(
        0.0, ge=0, le=1, description="Floor on the accuracy of each of the latest windows."
    )
    latest_windows: int = Field(
        1, ge=1, le=5, description="How many of the most recently trained windows the floor covers."
    )
    max_nonfinite_steps: int = Field(
        0, ge=0, description="Non-finite (skipped) steps allowed since the last published version."
    )


class AutoRollbackConfig(Section):
    enabled: bool = Field(
        False, description="After `after_failures` gate failures in a row, roll back to the "
        "last published version (single-process daemons only) and go on.",
    )  # fmt: skip
    after_failures: int = Field(3, ge=1, le=1000, description="Consecutive failures first.")


class PublishConfig(Section):
    enabled: bool = Field(False, description="Publish gated versions (off by default).")
    url: str = Field(
        "published",
        description="A local directory or any fsspec URL (s3://bucket/path, gs://...; the "
        "back-ends are extras). Credentials come from the environment, never from here.",
    )
    format: Literal["adapters", "merged"] = Field(
        "merged", description="adapters: trainable weights only; merged: a plain open_clip file."
    )
    blend: float | None = Field(
        None, ge=0, le=1,
        description="WiSE-FT blend toward the base: 0 = the base, 1 = as trained; null = 1.",
    )  # fmt: skip
    every_steps: int = Field(500, ge=1, description="Publish after this many steps...")
    every_seconds: float = Field(600.0, gt=0, description="...or this many seconds.")
    retries: int = Field(3, ge=0, le=100, description="Retries of a failed upload.")
    retry_backoff_seconds: float = Field(2.0, gt=0, description="First retry delay (doubling).")
    storage_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Non-secret fsspec options (endpoint_url, region); secrets go in the "
        "environment (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS).",
    )
    gate: GateConfig = Field(GateConfig(), description="What a version must pass.")
    auto_rollback: AutoRollbackConfig = Field(AutoRollbackConfig(), description="Self-repair.")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.strip():
            raise ValueError("publish.url must name a directory or an fsspec URL")
        if re.match(r"^[a-z0-9+.-]+://[^/@]*:[^/@]*@", url):
            raise ValueError("publish.url holds credentials; give them through the environment")
        return url

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, options: dict) -> dict:
        secret = [k for k in options if any(s in k.lower() for s in ("secret", "key", "token",
                                                                     "password"))]  # fmt: skip
        if secret:
            raise ValueError(
                f"publish.storage_options: {secret} look like secrets; give "
                "credentials through the environment (a Secret), not the config"
            )
        return options
