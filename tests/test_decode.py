"""Decoding real image bytes with limits; every failure has a typed reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from streamer.config import RecordConfig
from streamer.decode import decode_image
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
