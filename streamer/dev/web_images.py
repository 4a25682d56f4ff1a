"""Records as a web stream sends them: JPEGs of typical web size, from real images.

Each record's image is a real photograph (one of scikit-image's bundled test photos, read as
a file: astronaut, coffee, rocket, ...) cropped and resized at random to a web size around
640x480, with the record's own Fashion-MNIST item upscaled and pasted on it, so the caption
still names what is shown; JPEG-encoded at quality 85 (15-100 KB a record; the benchmark
states the median). The 28 px PNGs of the other benchmarks decode in microseconds and
would hide the decode cost that a GPU node has to feed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from streamer.records import Sample

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "color.png", "horse.png", "grass.png")  # fmt: skip
SIZES = ((640, 480), (480, 640), (640, 427), (800, 600), (512, 512))  # common web shapes
QUALITY = 85


@functools.cache
def photos() -> tuple[Image.Image, ...]:
    """scikit-image's bundled photos as RGB images (found without importing scikit-image)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise RuntimeError("realistic records need scikit-image's photos: pip install scikit-image")
    root = Path(spec.origin).parent / "data"
    found = [root / name for name in PHOTOS if (root / name).exists()]
    if not found:
        raise RuntimeError(f"no photos under {root}")
    return tuple(Image.open(p).convert("RGB") for p in found)


def web_jpeg(item: bytes, rng: random.Random) -> bytes:
    """A photo, cropped and resized to a web size, with `item` (any image) pasted on it."""
    photo = rng.choice(photos())
    width, height = rng.choice(SIZES)
    scale = rng.uniform(0.5, 1.0)  # crop a random part of the photo at the target aspect
    crop_w = min(photo.width, int(photo.height * width / height)) * scale
    crop_h = crop_w * height / width
    left = rng.uniform(0, photo.width - crop_w)
    top = rng.uniform(0, photo.height - crop_h)
    box = (int(left), int(top), int(left + crop_w), int(top + crop_h))
    canvas = photo.resize((width, height), Image.Resampling.BILINEAR, box=box)
    side = int(min(width, height) * rng.uniform(0.5, 0.8))
    with Image.open(io.BytesIO(item)) as pasted:
        thing = pasted.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    canvas.paste(thing, (rng.randrange(width - side + 1), rng.randrange(height - side + 1)))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()


def realistic(samples: Sequence[Sample], seed: int = 0) -> list[Sample]:
    """The same samples (ids, texts, labels, times) with web-sized JPEG images."""
    rng = random.Random(f"web-images-{seed}")
    return [dataclasses.replace(s, image=web_jpeg(s.image, rng)) for s in samples]
