"""Encoded image bytes to a PIL image, with limits; every failure is a typed reason."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image


class DecodeError(ValueError):
    """A record that cannot become a training pair. `reason` is a short, bounded label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # guards against decompression bombs
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode and convert to RGB (grayscale and alpha flattened)."""
    if not data:
        raise DecodeError("empty_image")
    if len(data) > limits.max_bytes:
        raise DecodeError("image_too_large", f"{len(data)} bytes > {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise DecodeError("too_many_pixels", f"{width}x{height} > {limits.max_pixels}")
            image.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("too_many_pixels", str(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise DecodeError("not_an_image", str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise DecodeError("corrupt_image", str(exc)) from exc
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
