"""What `streamer pretrain` writes beside the weights: the reference and distill manifests."""

from __future__ import annotations

import json

import pytest

from streamer.config import Settings
from streamer.dev import datasets, pretrain


@pytest.mark.skipif(not datasets.FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist")
def test_the_distill_images_are_of_the_base_domain_and_none_is_a_reference_probe(tmp_path):
    settings = Settings.model_validate({"stream": {"dataset": "fashion-mnist", "seed": 0}})
    ref = pretrain.write_reference(settings, tmp_path, 30)
    distill = pretrain.write_reference(settings, tmp_path, 50, name="distill", skip=30)
    rows = {m.stem: [json.loads(line) for line in m.read_text().splitlines()]
            for m in (ref, distill)}  # fmt: skip
    assert [len(rows["reference"]), len(rows["distill"])] == [30, 50]
    images = {k: {r["image"].split("/")[-1] for r in v} for k, v in rows.items()}
    assert not images["reference"] & images["distill"]  # retention measures the unseen
    assert all((tmp_path / r["image"]).is_file() for v in rows.values() for r in v)
    assert {r["label"] for r in rows["distill"]} <= set(datasets.FASHION_CLASSES)
