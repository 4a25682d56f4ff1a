"""Property-based fuzzing of the record path: whatever a record holds, the outcome is a Pair
or the typed refusal with a reason from the fixed vocabulary. Seeded and bounded for CI."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from streamer.config import RecordConfig
from streamer.intake.codec import REASONS
from streamer.intake.decode import Decoder
from streamer.records import DecodeError, Pair, RawRecord

FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
BROKER_MS = 1_700_000_000_000


def _png(size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
IMAGES = st.sampled_from([PNG, _png((1, 1)), _png((300, 2)), PNG[:40], b"", b"\x89PNG\r\n"])


def _decoder(codec: str = "json") -> Decoder:
    def preprocess(image: Image.Image) -> torch.Tensor:
        return torch.zeros(3, 4, 4)

    return Decoder(codec, RecordConfig(max_record_bytes=1 << 16), preprocess)


def _outcome(decoder: Decoder, raw: RawRecord) -> Pair | str:
    try:
        return decoder.decode(raw)
    except DecodeError as exc:  # the only exception allowed out
        assert exc.reason in REASONS, exc.reason
        return exc.reason


def _raw(value: bytes | None, headers=(), timestamp_ms: int = BROKER_MS) -> RawRecord:
    return RawRecord("pairs", 0, 5, value, None, tuple(headers), timestamp_ms)


JSON_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)  # fmt: skip
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=60) | JSON,
        "image": IMAGES.map(lambda b: base64.b64encode(b).decode()) | JSON,
        "image_uri": st.text(max_size=30) | JSON,
        "id": st.text(max_size=30) | JSON,
        "label": st.text(max_size=30) | JSON,
        "task": st.text(max_size=30) | JSON,
        "ts": st.floats() | st.integers() | st.text(max_size=10) | JSON,
    },
)  # fmt: skip


@FUZZ
@given(fields=FIELDS, timestamp_ms=st.integers(-1, 2**45))
def test_any_json_record_becomes_a_pair_or_a_typed_refusal(fields, timestamp_ms):
    value = json.dumps(fields).encode()  # NaN and Infinity literals included
    outcome = _outcome(_decoder(), _raw(value, timestamp_ms=timestamp_ms))
    if isinstance(outcome, Pair):
        sample = outcome.sample
        assert sample.text.strip() and sample.ts == sample.ts  # finite, never NaN
        sample.id.encode() and sample.text.encode()  # valid UTF-8: hashable, loggable


@FUZZ
@given(value=st.binary(max_size=300))
def test_any_bytes_become_a_pair_or_a_typed_refusal(value):
    for codec in ("json", "raw"):
        _outcome(_decoder(codec), _raw(value, [("text", b"a caption")]))


HEADER_VALUES = st.binary(max_size=20) | st.text(max_size=20).map(str.encode) | st.none()
HEADERS = st.lists(st.tuples(st.sampled_from(["text", "label", "task", "id", "ts", "other"]),
                             HEADER_VALUES), max_size=6)  # fmt: skip


@FUZZ
@given(headers=HEADERS, image=IMAGES)
def test_any_raw_headers_become_a_pair_or_a_typed_refusal(headers, image):
    _outcome(_decoder("raw"), _raw(image, headers))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[" * 20_000 + b"]" * 20_000, "json_too_deep"),
        (b'{"text": "t", "image": "%s", "ts": NaN}' % base64.b64encode(PNG),
         "event_time_out_of_range"),
        (b'{"text": "t", "image": "%s", "ts": -1e300}' % base64.b64encode(PNG),
         "event_time_out_of_range"),
        (b'{"text": "t", "image": "%s", "ts": 1e999}' % base64.b64encode(PNG),
         "event_time_out_of_range"),
        (b'{"text": "t", "image": "%s", "ts": 1%s}' % (base64.b64encode(PNG), b"0" * 5000),
         "not_json"),
        (b'{"text": "\\ud800", "image": "%s"}' % base64.b64encode(PNG), "invalid_field"),
        (b'{"text": "t", "label": "\\udfff", "image": "%s"}' % base64.b64encode(PNG),
         "invalid_field"),
        (b'{"text": "t", "image": "%s"}' % base64.b64encode(_png((300, 2))),
         "extreme_aspect_ratio"),
        (b'{"text": "t", "image": "%s", "ts": true}' % base64.b64encode(PNG), "invalid_field"),
    ],
)  # fmt: skip
def test_poison_records_of_the_issue_are_refused_with_their_reason(value, reason):
    assert _outcome(_decoder(), _raw(value)) == reason


def test_an_exception_nobody_foresaw_is_an_internal_error_of_that_record_only():
    def broken(image: Image.Image) -> torch.Tensor:
        raise ZeroDivisionError("a library's surprise")

    decoder = Decoder("json", RecordConfig(), broken)
    value = json.dumps({"text": "t", "image": base64.b64encode(PNG).decode()}).encode()
    with pytest.raises(DecodeError) as error:
        decoder.decode(_raw(value))
    assert error.value.reason == "internal_error"
    assert "ZeroDivisionError" in error.value.detail


def test_an_event_time_near_the_broker_time_is_kept_and_a_missing_one_is_the_broker_time():
    decoder = _decoder()
    image = base64.b64encode(PNG).decode()
    near = json.dumps({"text": "t", "image": image, "ts": BROKER_MS / 1000 - 3600}).encode()
    assert decoder.decode(_raw(near)).sample.ts == BROKER_MS / 1000 - 3600
    none = json.dumps({"text": "t", "image": image}).encode()
    assert decoder.decode(_raw(none)).sample.ts == BROKER_MS / 1000
