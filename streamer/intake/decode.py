"""The one way a record becomes a training pair: envelope, fields, image limits, pixels.

`Decoder.decode(raw)` returns a Pair or raises the typed refusal (DecodeError), whatever the
record holds: any other exception raised for one record becomes `internal_error`, with the
exception's type in the detail, so no single record can stop the daemon.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from streamer.config import RecordConfig
from streamer.intake import codec
from streamer.intake.fetch import Fetcher
from streamer.records import DecodeError, Pair, RawRecord, Sample

Preprocess = Callable[[Image.Image], torch.Tensor]  # PIL image -> pixels [3, H, W]
Tokenize = Callable[[Sequence[str]], torch.Tensor]  # texts [T] -> tokens [T, L]


class Decoder:
    """Built once from the record config, the codec and the model's preprocessing."""

    def __init__(
        self,
        codec_name: str,
        cfg: RecordConfig,
        preprocess: Preprocess,
        tokenize: Tokenize | None = None,
        prompt_template: str = "a photo of a {label}.",
        draft_size: int | None = None,
    ) -> None:
        self.codec = codec_name
        self.draft_size = draft_size if cfg.jpeg_draft else None
        self.cfg = cfg
        self._preprocess = preprocess
        self._tokenize = tokenize
        self._template = prompt_template
        self._fetch = Fetcher(cfg)  # image_uri: file:// under image_root, allowed origins

    def decode(self, raw: RawRecord) -> Pair:
        """Raw record -> Pair, or DecodeError with a reason from codec.REASONS."""
        try:
            sample = codec.parse(raw, self.codec, self.cfg, self._fetch)
            if self._tokenize is not None:  # the training thread tokenizes it again later
                self._tokenize([sample.prompt(self._template)])
            return self.pair(sample)
        except DecodeError:
            raise
        except Exception as exc:  # a bug or a library's surprise: this record only
            detail = f"{type(exc).__name__}: {exc}"[:200]
            raise DecodeError("internal_error", detail) from exc

    def with_preprocess(self, preprocess: Preprocess) -> Decoder:
        """The same decoder with another preprocessing (one that pickles, for processes)."""
        other = copy.copy(self)
        other._preprocess = preprocess
        return other

    def pair(self, sample: Sample) -> Pair:
        return Pair(sample, self.pixels(sample))

    def pixels(self, sample: Sample) -> torch.Tensor:
        """Encoded image -> the model's input tensor [3, H, W]."""
        return self._preprocess(decode_image(sample.image, self.cfg, self.draft_size))


def default_decode_workers() -> int:
    """The CPUs this process may use (affinity and a cgroup quota, as in a Kubernetes pod),
    less one for the training thread; at least 1, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus or 1, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, min(8, (cpus or 1) - 1))


def decode_image(
    data: bytes, limits: RecordConfig | None = None, draft_size: int | None = None
) -> Image.Image:
    """Decode and convert to RGB (grayscale and alpha flattened), within `limits`'s image
    size, pixel count, aspect ratio and formats (the record config's defaults if None).

    `draft_size`: a JPEG at least twice that on both sides is decoded at 1/2, 1/4 or 1/8
    scale (Pillow's draft: the DCT does the shrinking), never below it, so resizing to the
    model's input loses nothing it would keep; a 640x480 photo for 224 px decodes ~3x faster.
    """
    limits = limits or RecordConfig()
    if not data:
        raise DecodeError("empty_image")
    if len(data) > limits.max_image_bytes:
        raise DecodeError("image_too_large", f"{len(data)} bytes > {limits.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
            _check_size(image.size, limits)
            if draft_size and image.format == "JPEG":
                image.draft(None, (draft_size, draft_size))
            image.load()
            return _to_rgb(image)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("too_many_pixels", str(exc)[:200]) from exc
    except Image.UnidentifiedImageError as exc:
        raise DecodeError("not_an_image", str(exc)[:200]) from exc
    except Exception as exc:  # truncated or corrupt data: Pillow raises many kinds
        raise DecodeError("corrupt_image", f"{type(exc).__name__}: {exc}"[:200]) from exc


def _check_size(size: tuple[int, int], limits: RecordConfig) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise DecodeError("too_many_pixels", f"{width}x{height} > {limits.max_pixels}")
    if width < 1 or height < 1 or max(size) / min(size) > limits.max_aspect_ratio:
        raise DecodeError("extreme_aspect_ratio", f"{width}x{height}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
