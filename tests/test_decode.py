"""Decoding real image bytes with limits; every failure has a typed reason."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from streamer.config import ModelConfig, RecordConfig
from streamer.intake.decode import Decoder, decode_image, default_decode_workers
from streamer.learning.model import ClipModel
from streamer.records import DecodeError


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _photo(mode: str = "RGB", size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    array = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    return Image.fromarray(array, mode=mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_decode_to_rgb(fmt):
    image = decode_image(_encode(_photo(), fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA"])
def test_grayscale_and_alpha_become_rgb(mode):
    image = decode_image(_encode(_photo(mode), "PNG"))
    assert image.mode == "RGB"


def test_transparent_pixels_are_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_image(_encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_image"),
        (b"this is not an image at all", "not_an_image"),
        (_encode(_photo(), "PNG")[:200], "corrupt_image"),
        (_encode(_photo(), "JPEG")[:150], "corrupt_image"),
    ],
)
def test_bad_bytes_fail_with_a_reason(data, reason):
    with pytest.raises(DecodeError) as error:
        decode_image(data)
    assert error.value.reason == reason


def test_limits_on_bytes_pixels_and_formats():
    png = _encode(_photo(size=(100, 100)), "PNG")
    with pytest.raises(DecodeError, match="image_too_large"):
        decode_image(png, RecordConfig(max_image_bytes=100))
    with pytest.raises(DecodeError, match="too_many_pixels"):
        decode_image(png, RecordConfig(max_pixels=5_000))
    with pytest.raises(DecodeError, match="not_an_image"):
        decode_image(png, RecordConfig(formats=("JPEG",)))


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims a huge size (a decompression bomb's signature)."""
    png = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = png[12:29]  # chunk type + data of IHDR
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_claiming(20_000, 20_000)  # 400 M pixels in under 100 bytes
    assert len(bomb) < 100
    with pytest.raises(DecodeError, match="too_many_pixels"):
        decode_image(bomb)


def _jpeg(size: tuple[int, int]) -> bytes:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    array = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 256], -1)
    return _encode(Image.fromarray(array.astype(np.uint8)), "JPEG")


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [((640, 480), 224, (320, 240)), ((1600, 1200), 224, (400, 300)), ((400, 300), 224, (400, 300))],
)
def test_jpeg_draft_shrinks_by_a_power_of_two_never_below_the_target(size, target, expected):
    assert decode_image(_jpeg(size), draft_size=target).size == expected
    assert decode_image(_jpeg(size)).size == size  # without a target: full size


def test_jpeg_draft_gives_the_model_nearly_the_same_input():
    model = ClipModel(ModelConfig(arch="ViT-B-32"), torch.device("cpu"), seed=0)  # 224 px
    data = _jpeg((640, 480))
    full = model.pixels(decode_image(data)).float()
    draft = model.pixels(decode_image(data, draft_size=model.image_size)).float()
    assert model.image_size == 224 and full.shape == draft.shape == (3, 224, 224)
    assert (full - draft).abs().mean() < 3  # of 255: the DCT's shrink, then the same resize


def test_the_draft_is_only_for_jpeg_and_can_be_switched_off():
    png = _encode(_photo(size=(640, 480)), "PNG")
    assert decode_image(png, draft_size=224).size == (640, 480)
    decoder = Decoder("json", RecordConfig(jpeg_draft=False), lambda image: image,
                      draft_size=224)  # fmt: skip
    assert decoder.draft_size is None


def test_default_decode_workers_leave_a_core_and_honour_the_cpu_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(6)))
    assert default_decode_workers() in {5, *range(1, 5)}  # a cgroup quota may lower it
    quota = tmp_path / "cpu.max"
    quota.write_text("300000 100000\n")  # 3 CPUs, as a pod's limit sets it
    real_path = Path

    def fake_path(name, *rest):
        return quota if str(name) == "/sys/fs/cgroup/cpu.max" else real_path(name, *rest)

    monkeypatch.setattr("streamer.intake.decode.Path", fake_path)
    assert default_decode_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert default_decode_workers() == 1  # never none
