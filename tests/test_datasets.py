"""Real datasets as streams: readers, class-incremental and blurry schedules."""

from __future__ import annotations

import collections
import io
import json

import pytest
from PIL import Image

from streamer.config import StreamConfig
from streamer.dev import datasets
from streamer.intake.decode import decode_image

needs_fashion = pytest.mark.skipif(
    not datasets.FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed"
)


@needs_fashion
def test_fashion_mnist_reads_the_debian_idx_files():
    items = datasets.fashion_mnist(split="test")
    assert len(items) == 10_000
    assert collections.Counter(i.label for i in items) == dict.fromkeys(
        datasets.FASHION_CLASSES, 1_000
    )
    image = decode_image(items[0].encode("PNG"))
    assert image.size == (28, 28)


def test_digits_are_real_8x8_images():
    items = datasets.digits()
    assert len(items) == 1_797 and {i.label for i in items} == set(datasets.DIGIT_NAMES)
    assert decode_image(items[0].encode("JPEG")).size == (8, 8)


def test_class_incremental_tasks_are_disjoint_and_ordered():
    cfg = StreamConfig(dataset="digits", tasks=5, seed=3)
    samples = list(datasets.stream(cfg))
    by_task = collections.defaultdict(set)
    for s in samples:
        by_task[s.task].add(s.label)
    assert list(by_task) == [f"task-{t}" for t in range(5)]  # tasks arrive in order
    assert all(len(labels) == 2 for labels in by_task.values())
    assert len(set().union(*by_task.values())) == 10
    assert [s.ts for s in samples] == sorted(s.ts for s in samples)
    assert samples[0].text == f"a photo of a {samples[0].label}."


def test_blurry_schedule_moves_the_configured_share_across_tasks():
    cfg = StreamConfig(dataset="digits", tasks=2, blurry=0.1, seed=0)
    tasks = datasets.task_schedule(datasets.digits(), cfg)
    crisp = datasets.task_schedule(datasets.digits(), cfg.model_copy(update={"blurry": 0.0}))
    home = {label: t for t, task in enumerate(crisp) for label in {i.label for i in task}}
    foreign = sum(home[i.label] != t for t, task in enumerate(tasks) for i in task)
    assert foreign == pytest.approx(0.1 * 1_797, abs=2)


def test_per_class_cap_and_seeded_order():
    cfg = StreamConfig(dataset="digits", tasks=2, per_class=20, seed=1)
    first = [s.id for s in datasets.stream(cfg)]
    assert len(first) == 200 and first == [s.id for s in datasets.stream(cfg)]


def test_manifest_lines_become_samples(tmp_path):
    for _n, colour in enumerate(["red", "blue"]):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
        (tmp_path / f"{colour}.png").write_bytes(buffer.getvalue())
    lines = [
        {"image": "red.png", "text": "a red square", "label": "red"},
        {"image": "blue.png", "text": "a blue square", "label": "blue"},
    ]
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    cfg = StreamConfig(dataset="manifest", path=manifest, tasks=1)
    samples = list(datasets.stream(cfg))
    assert {s.text for s in samples} == {"a red square", "a blue square"}
    assert decode_image(samples[0].image).size == (8, 8)


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(datasets.DatasetError, match="dataset-fashion-mnist"):
        datasets.fashion_mnist(tmp_path)
