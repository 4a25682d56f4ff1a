"""Record values to Samples: the `json` and `raw` codecs, validated; failures carry a reason.

json: UTF-8 JSON object with `text` and exactly one of `image` (base64 JPEG/PNG/WebP) or
`image_uri` (file:// under records.image_root, or an origin on records.fetch.allow: see
fetch.py); optional `id`, `label`, `task`, `ts`.
raw: the value is the image bytes; `text`, `label`, `task`, `id`, `ts` are headers.

Every field is checked here, so nothing downstream (windows, metrics, logs, the replay
buffer) ever sees a non-finite time, an absurd one, or a string that is not valid UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamer.config import RecordConfig
from streamer.intake.fetch import read_file
from streamer.records import DecodeError, RawRecord, Sample

Fetch = Callable[[str], bytes]  # an image_uri -> its bytes, or DecodeError

# Every reason a record can be refused for (a fixed vocabulary: it labels a metric).
REASONS = (
    "empty_value", "record_too_large", "not_json", "json_too_deep", "not_json_object",
    "missing_field", "invalid_field", "image_choice", "bad_base64", "uri_scheme",
    "uri_outside_root", "uri_unreadable", "uri_host_not_allowed", "uri_not_found",
    "uri_timeout", "uri_content_type", "empty_text", "text_too_long",
    "event_time_out_of_range", "empty_image", "image_too_large", "too_many_pixels",
    "extreme_aspect_ratio", "not_an_image", "corrupt_image", "unreadable_record",
    "decode_crashed", "decode_timeout", "internal_error",
)  # fmt: skip
NO_BROKER_TIME_LIMIT = 1e11  # seconds since the epoch (year 5138): bound without a reference


class JsonRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    text: str = Field(min_length=1)
    image: str | None = None
    image_uri: str | None = Field(None, max_length=4096)
    id: str | None = Field(None, min_length=1, max_length=512)
    label: str | None = Field(None, min_length=1, max_length=512)
    task: str | None = Field(None, min_length=1, max_length=128)
    ts: float | None = None  # NaN and inf pass here; event_time refuses them


def parse(raw: RawRecord, codec: str, cfg: RecordConfig, fetch: Fetch | None = None) -> Sample:
    """Validate a record's envelope; the image stays encoded (decoded later, with limits).
    `fetch` reads an image_uri (default: file:// under records.image_root only)."""
    if not raw.value:
        raise DecodeError("empty_value")
    if len(raw.value) > cfg.max_record_bytes:
        raise DecodeError("record_too_large", f"{len(raw.value)} > {cfg.max_record_bytes}")
    fetch = fetch or (lambda uri: read_file(urlsplit(uri), cfg))
    fields = _json_fields(raw, fetch) if codec == "json" else _raw_fields(raw)
    for name in ("text", "id", "label", "task"):
        _check_utf8(name, fields.get(name))
    text = fields["text"].strip()
    if not text:
        raise DecodeError("empty_text")
    if len(text) > cfg.max_text_chars:
        raise DecodeError("text_too_long", f"{len(text)} > {cfg.max_text_chars} characters")
    return Sample(
        id=fields.get("id") or f"{raw.topic}-{raw.partition}-{raw.offset}",
        image=fields["image"],
        text=text,
        label=fields.get("label"),
        task=fields.get("task"),
        ts=event_time(fields.get("ts"), raw.timestamp_ms, cfg),
    )


def event_time(ts: float | None, broker_ms: int, cfg: RecordConfig) -> float:
    """The record's event time: its own `ts` when finite and near the broker's timestamp,
    else refused; the broker's timestamp when it has none."""
    broker = broker_ms / 1000.0 if broker_ms >= 0 else None  # -1: the broker gave none
    if ts is None:
        return broker if broker is not None else 0.0
    if not math.isfinite(ts):
        raise DecodeError("event_time_out_of_range", "ts is not a finite number")
    limit = cfg.max_event_time_skew_seconds
    if broker is not None and abs(ts - broker) > limit:
        raise DecodeError(
            "event_time_out_of_range", f"ts is {ts - broker:.3g} s from the broker time"
        )
    if broker is None and not 0 <= ts < NO_BROKER_TIME_LIMIT:
        raise DecodeError("event_time_out_of_range", f"ts {ts:.3g} outside [0, 1e11)")
    return float(ts)


def _check_utf8(name: str, value: str | None) -> None:
    """JSON may carry lone surrogates (\\ud800); they cannot be encoded, hashed or logged."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DecodeError("invalid_field", f"{name}: not valid UTF-8 text") from exc


def _json_fields(raw: RawRecord, fetch: Fetch) -> dict[str, Any]:
    data = _load_json(raw.value)
    if not isinstance(data, dict):
        raise DecodeError("not_json_object", type(data).__name__)
    try:
        record = JsonRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        reason = "missing_field" if first["type"] == "missing" else "invalid_field"
        raise DecodeError(reason, f"{where}: {first['msg']}"[:200]) from exc
    if (record.image is None) == (record.image_uri is None):
        raise DecodeError("image_choice", "exactly one of image or image_uri is required")
    image = _base64(record.image) if record.image is not None else fetch(record.image_uri or "")
    return {**record.model_dump(exclude={"image", "image_uri"}), "image": image}


def _load_json(value: bytes) -> Any:
    try:
        return json.loads(value)
    except RecursionError as exc:  # nesting deeper than the interpreter's recursion limit
        raise DecodeError("json_too_deep", "nested too deeply to parse") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, over-long integers
        raise DecodeError("not_json", str(exc)[:200]) from exc


def _base64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("bad_base64", str(exc)[:200]) from exc


def _raw_fields(raw: RawRecord) -> dict[str, Any]:
    headers: dict[str, str | None] = {}
    for key, value in raw.headers:
        try:
            headers[key] = value.decode("utf-8") if value is not None else None
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_field", f"header {key[:64]} is not UTF-8") from exc
    if not headers.get("text"):
        raise DecodeError("missing_field", "text header is required")
    for name, limit in (("id", 512), ("label", 512), ("task", 128)):
        if len(headers.get(name) or "") > limit:
            raise DecodeError("invalid_field", f"{name} header longer than {limit} characters")
    return {**{k: headers.get(k) or None for k in ("id", "label", "task")},
            "text": headers["text"], "image": raw.value, "ts": _header_time(headers)}  # fmt: skip


def _header_time(headers: dict[str, str | None]) -> float | None:
    value = headers.get("ts")
    if not value:
        return None
    try:
        return float(value)  # "nan" and "inf" parse; event_time refuses them
    except ValueError as exc:
        raise DecodeError("invalid_field", "ts header is not a number") from exc


def encode_json(sample: Sample) -> bytes:
    """The json codec's value for a sample (what `streamer produce` sends)."""
    image = base64.b64encode(sample.image).decode("ascii")
    body = {"text": sample.text, "image": image, "id": sample.id, "label": sample.label,
            "task": sample.task, "ts": sample.ts}  # fmt: skip
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def encode_raw(sample: Sample) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The raw codec's value and headers for a sample."""
    fields = {"text": sample.text, "id": sample.id, "label": sample.label, "task": sample.task,
              "ts": repr(sample.ts)}  # fmt: skip
    return sample.image, [(k, v.encode()) for k, v in fields.items() if v is not None]
