"""Config of where records come from and what is accepted: Kafka, records, dead letters, and
the harness's dataset stream."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, FilePath, SecretStr, model_validator

from streamer.config.base import Section


class StreamConfig(Section):
    """A dataset stream for the development harness: `streamer produce`, `simulate`, the demo."""

    dataset: Literal["fashion-mnist", "digits", "manifest"] = Field(
        "fashion-mnist", description="Which dataset to stream."
    )
    path: Path | None = Field(None, description="IDX directory or JSONL manifest path.")
    split: Literal["train", "test"] = Field(
        "train", description="Fashion-MNIST's split (60,000 train or 10,000 test images)."
    )
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
        description="A poll error that is not about connectivity (authorization, a deleted "
        "topic) repeating for this long fails the daemon, naming the cause. A broker that "
        "cannot be reached is waited for however long it takes (not ready, still live).",
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


REMOTE_SCHEMES = {"https": None, "http": None, "s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs",
                  "memory": None}  # fmt: skip  # scheme: the fsspec back-end it needs


class FetchConfig(Section):
    """Images by reference: which remote `image_uri` origins are read, and within what."""

    allow: tuple[str, ...] = Field(
        (),
        description="Origins an image_uri may name besides file:// under image_root, as "
        "scheme://host[:port]: https://images.example.com, s3://bucket, gs://bucket "
        "(memory:// for tests); a host *.example.com allows its subdomains, * any host. "
        "http:// only when listed (plain text). Empty: nothing remote is read.",
    )
    timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A whole fetch (connect, wait, read) past this is given up and its "
        "record dead-lettered (uri_timeout): a slow store never stalls a partition.",
    )
    max_concurrent: int = Field(
        8,
        ge=1,
        le=256,
        description="Fetches in flight at once over all decode threads (each also holds a "
        "decode thread while it waits: raise decode_workers for a slow store).",
    )
    content_types: tuple[str, ...] = Field(
        ("image/jpeg", "image/png", "image/webp"),
        min_length=1,
        description="Content-Type values accepted from http(s) (parameters ignored); others "
        "are refused (uri_content_type). Size is bounded by max_image_bytes.",
    )

    @model_validator(mode="after")
    def _origins_are_scheme_and_host(self) -> FetchConfig:
        for entry in self.allow:
            origin = urlsplit(entry)
            if origin.scheme not in REMOTE_SCHEMES:
                raise ValueError(
                    f"allow: {entry!r}: scheme must be one of {sorted(REMOTE_SCHEMES)}"
                )
            if not origin.hostname or origin.path not in ("", "/") or origin.query or "@" in entry:
                raise ValueError(f"allow: {entry!r}: give scheme://host[:port] only")
            needs = REMOTE_SCHEMES[origin.scheme]
            if needs is not None and importlib.util.find_spec(needs) is None:
                extra = {"s3fs": "s3", "gcsfs": "gcs"}[needs]
                raise ValueError(f"allow: {entry!r} needs the {needs} package "
                                 f"(pip install 'streamer[{extra}]')")  # fmt: skip
        return self


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
    fetch: FetchConfig = Field(FetchConfig(), description="Images by reference (remote image_uri).")
    decode_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Threads decoding records (order within a partition is kept). Default: "
        "the CPUs the process may use (affinity and cgroup quota) less one, at most 8.",
    )
    decode_mode: Literal["auto", "threads", "processes"] = Field(
        "auto",
        description="threads: decode workers share the daemon's GIL (they stop scaling at "
        "about 4). processes: each worker is a process with its own (a crashing or hanging "
        "record is refused as decode_crashed / decode_timeout). auto: processes from 4 "
        "workers on, threads below.",
    )
    decode_timeout_seconds: float = Field(
        30.0, gt=0, description="processes: a record decoding longer than this is refused."
    )
    jpeg_draft: bool = Field(
        True,
        description="Decode a JPEG much larger than the model's input at 1/2, 1/4 or 1/8 "
        "scale (never below the input size): several times faster for web-sized photos.",
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
