"""Record envelopes: the json and raw codecs, and every refusal's reason."""

from __future__ import annotations

import base64
import json

import pytest

from streamer.config import RecordConfig
from streamer.intake.codec import encode_json, encode_raw, parse
from streamer.records import DecodeError, RawRecord, Sample

CFG = RecordConfig()
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def _raw(value: bytes | None, headers=(), offset: int = 7) -> RawRecord:
    return RawRecord("pairs", 2, offset, value, None, tuple(headers), 1_700_000_000_000)


def _json(**fields) -> RawRecord:
    return _raw(json.dumps(fields).encode())


def test_json_record_round_trips_through_the_producer_encoding():
    sample = Sample("id-1", PNG, "a photo of a bag.", "bag", "task-3", 1_700_000_012.5)
    assert parse(_raw(encode_json(sample)), "json", CFG) == sample


def test_raw_record_round_trips_through_the_producer_encoding():
    sample = Sample("id-2", PNG, "a shoe", "sneaker", None, 1_699_999_999.0)
    value, headers = encode_raw(sample)
    assert parse(_raw(value, headers), "raw", CFG) == sample


def test_defaults_come_from_the_kafka_record():
    sample = parse(_json(text=" a cat ", image=base64.b64encode(PNG).decode()), "json", CFG)
    assert sample.id == "pairs-2-7" and sample.ts == 1_700_000_000.0 and sample.text == "a cat"
    assert sample.label is None and sample.task is None


def test_image_uri_is_read_under_the_root_only(tmp_path):
    (tmp_path / "x.png").write_bytes(PNG)
    cfg = RecordConfig(image_root=tmp_path)
    sample = parse(_json(text="t", image_uri=f"file://{tmp_path}/x.png"), "json", cfg)
    assert sample.image == PNG
    outside = tmp_path.parent / "y.png"
    outside.write_bytes(PNG)
    for uri, reason in [
        (f"file://{outside}", "uri_outside_root"),
        (f"file://{tmp_path}/../y.png", "uri_outside_root"),
        ("http://example.com/x.png", "uri_scheme"),
        (f"file://{tmp_path}/missing.png", "uri_not_found"),
    ]:
        with pytest.raises(DecodeError) as error:
            parse(_json(text="t", image_uri=uri), "json", cfg)
        assert error.value.reason == reason, uri
    with pytest.raises(DecodeError, match="uri_outside_root"):  # no root configured
        parse(_json(text="t", image_uri=f"file://{tmp_path}/x.png"), "json", CFG)


IMG = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_raw(None), "empty_value"),
        (_raw(b"x" * (CFG.max_record_bytes + 1)), "record_too_large"),
        (_raw(b"{not json"), "not_json"),
        (_raw(b'"a string"'), "not_json_object"),
        (_json(image=IMG), "missing_field"),
        (_json(text=["a"], image=IMG), "invalid_field"),
        (_json(text="t", image=IMG, label=3), "invalid_field"),
        (_json(text="t", image=IMG, ts="yesterday"), "invalid_field"),
        (_json(text="t"), "image_choice"),
        (_json(text="t", image=IMG, image_uri="file:///x"), "image_choice"),
        (_json(text="t", image="***"), "bad_base64"),
        (_json(text="\n \t", image=IMG), "empty_text"),
        (_json(text="w" * (CFG.max_text_chars + 1), image=IMG), "text_too_long"),
        (_raw(PNG, [("label", b"x")]), "missing_field"),
        (_raw(PNG, [("text", b"\xff\xfe")]), "invalid_field"),
        (_raw(PNG, [("text", b"t"), ("ts", b"soon")]), "invalid_field"),
    ],
)
def test_refusals_carry_a_bounded_reason(record, reason):
    codec = "raw" if record.value == PNG else "json"
    with pytest.raises(DecodeError) as error:
        parse(record, codec, CFG)
    assert error.value.reason == reason


def test_every_reason_raised_anywhere_is_in_the_fixed_vocabulary():
    import re
    from pathlib import Path

    import streamer
    from streamer.intake.codec import REASONS

    source = "".join(p.read_text() for p in Path(streamer.__file__).parent.rglob("*.py"))
    raised = set(re.findall(r'DecodeError\(\s*"([a-z0-9_]+)"', source))
    assert raised == set(REASONS)
