"""Real image-text data as a producer would emit it: encoded images, captions, labels, tasks.

Sources: Fashion-MNIST (Debian's IDX files), scikit-learn's digits, a JSONL manifest.
Schedules: class-incremental tasks, optionally with blurry boundaries (Koh et al. 2022).
"""

from __future__ import annotations

import gzip
import io
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from streamer.config import StreamConfig
from streamer.intake.manifest import read_manifest
from streamer.records import Sample

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION = "a photo of a {label}."


class DatasetError(RuntimeError):
    """A dataset cannot be read; the message names the path and what to install."""


@dataclass(frozen=True)
class Item:
    """One labelled image of a dataset; `encode` yields its bytes in a given format."""

    key: str
    label: str
    encode: Callable[[str], bytes]
    text: str | None = None


def _array_encoder(array: np.ndarray) -> Callable[[str], bytes]:
    def encode(fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt)
        return buffer.getvalue()

    return encode


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        _, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if dtype != 0x08:
            raise DatasetError(f"{path}: not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def fashion_mnist(root: Path | None = None, split: str = "train") -> list[Item]:
    root = root or FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise DatasetError(f"{images_path} not found: apt-get install dataset-fashion-mnist")
    images = _read_idx(images_path)
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return [
        Item(f"fmnist-{split}-{i}", FASHION_CLASSES[int(y)], _array_encoder(x))
        for i, (x, y) in enumerate(zip(images, labels, strict=True))
    ]


def digits() -> list[Item]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return [
        Item(f"digits-{i}", DIGIT_NAMES[int(y)], _array_encoder(x))
        for i, (x, y) in enumerate(zip(images, bunch.target, strict=True))
    ]


def manifest(path: Path) -> list[Item]:
    """JSONL lines `{"image": path, "text": ..., "label": ...}`; paths relative to the file."""
    return [Item(e.key, e.label, _file_reader(e.image), e.text) for e in read_manifest(path)]


def _file_reader(path: Path) -> Callable[[str], bytes]:
    return lambda _fmt: path.read_bytes()  # shipped as encoded; the format is the file's own


def load(cfg: StreamConfig) -> list[Item]:
    if cfg.dataset == "fashion-mnist":
        return fashion_mnist(cfg.path, cfg.split)
    if cfg.dataset == "digits":
        return digits()
    if cfg.path is None:
        raise DatasetError("stream.path: a manifest dataset needs the JSONL file's path")
    return manifest(cfg.path)


def task_schedule(items: Sequence[Item], cfg: StreamConfig) -> list[list[Item]]:
    """Split items into class-incremental tasks; with `blurry` > 0 a share of each task's
    samples is moved to other tasks, so class boundaries overlap."""
    rng = random.Random(cfg.seed)
    classes = sorted({i.label for i in items if i.label is not None})
    rng.shuffle(classes)
    per_task = cfg.classes_per_task or max(1, len(classes) // cfg.tasks)
    task_of = {c: min(n // per_task, cfg.tasks - 1) for n, c in enumerate(classes)}
    tasks: list[list[Item]] = [[] for _ in range(cfg.tasks)]
    taken: dict[str, int] = {}
    for item in items:
        if item.label is None or (cfg.per_class and taken.get(item.label, 0) >= cfg.per_class):
            continue
        taken[item.label] = taken.get(item.label, 0) + 1
        tasks[task_of[item.label]].append(item)
    if cfg.blurry > 0 and cfg.tasks > 1:
        tasks = _blur(tasks, cfg.blurry, rng)
    for task in tasks:
        rng.shuffle(task)
    return tasks


def _blur(tasks: list[list[Item]], share: float, rng: random.Random) -> list[list[Item]]:
    blurred: list[list[Item]] = [[] for _ in tasks]
    for t, task in enumerate(tasks):
        rng.shuffle(task)
        moved = round(share * len(task))
        for item in task[:moved]:
            blurred[rng.choice([o for o in range(len(tasks)) if o != t])].append(item)
        blurred[t].extend(task[moved:])
    return blurred


def stream(cfg: StreamConfig, start_ts: float = 1.7e9, interval: float = 0.01) -> Iterator[Sample]:
    """The dataset's samples in task order, encoded as a producer would send them."""
    n = 0
    for t, task in enumerate(task_schedule(load(cfg), cfg)):
        for item in task:
            yield Sample(
                id=item.key,
                image=item.encode(cfg.image_format),
                text=item.text or CAPTION.format(label=item.label),
                label=item.label,
                task=f"task-{t}",
                ts=start_ts + n * interval,
            )
            n += 1
