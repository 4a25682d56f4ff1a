"""Alignment measures on embeddings whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from streamer import alignment


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_perfectly_aligned_pairs():
    x = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    assert alignment.matched_cosine(x, x) == pytest.approx(1.0)
    assert alignment.modality_gap(x, x) == pytest.approx(0.0)
    assert alignment.alignment(x, x) == pytest.approx(0.0)
    assert alignment.drift(x, x) == pytest.approx(0.0, abs=1e-7)
    assert alignment.structure_kl(x, x, x, x, 10.0) == pytest.approx(0.0, abs=1e-6)
    assert alignment.recall_at_k(x, x, ["a", "b", "c"], 1) == (1.0, 1.0)


def test_modality_gap_is_the_distance_between_centroids():
    img = _unit([1, 0], [1, 0])
    txt = _unit([0, 1], [0, 1])
    assert alignment.modality_gap(img, txt) == pytest.approx(math.sqrt(2))
    assert alignment.matched_cosine(img, txt) == pytest.approx(0.0)
    assert alignment.alignment(img, txt) == pytest.approx(2.0)


def test_uniformity_prefers_spread_embeddings():
    spread = _unit([1, 0], [0, 1], [-1, 0], [0, -1])
    clumped = _unit([1, 0], [1, 0.1], [1, -0.1], [1, 0.05])
    assert alignment.uniformity(spread) < alignment.uniformity(clumped)
    assert alignment.uniformity(_unit([1, 0])) == 0.0


def test_recall_counts_identical_texts_as_one_target():
    img = _unit([1, 0.1], [1, -0.1], [0, 1])
    txt = _unit([0, 1], [0, 1], [1, 0])  # rows 0-1 share a caption but are wrong for images 0-1
    texts = ["cat", "cat", "dog"]
    r1_i2t, _r1_t2i = alignment.recall_at_k(img, txt, texts, 1)
    assert r1_i2t == pytest.approx(0.0)  # images 0, 1 -> "dog"; image 2 -> "cat" (wrong)
    assert alignment.recall_at_k(img, txt, texts, 2)[0] == pytest.approx(1.0)


def test_drift_and_structure_kl_see_one_modality_move():
    img0 = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    txt0 = img0.clone()
    rotated = _unit([0, 1, 0], [0, 0, 1], [1, 0, 0])  # images move, texts stay
    assert alignment.drift(rotated, img0) == pytest.approx(1.0)
    assert alignment.drift(txt0, txt0) == pytest.approx(0.0, abs=1e-7)
    assert alignment.structure_kl(rotated, txt0, img0, txt0, 10.0) > 5.0


def test_misalignment_counts_one_sided_structure_change_only():
    assert alignment.drift_asymmetry(0.2, 0.0) == 1.0
    assert alignment.drift_asymmetry(0.1, 0.1) == 0.0
    assert alignment.drift_asymmetry(0.0, 0.0) == 0.0  # nothing moved: nothing one-sided
    assert alignment.drift_asymmetry(-1e-8, 0.0) == 0.0  # rounding below zero is no drift
    assert alignment.misalignment(0.2, 0.0, 0.7) == pytest.approx(0.7)  # one tower: all of it
    assert alignment.misalignment(0.1, 0.1, 0.7) == 0.0  # both alike: none of it
    assert alignment.misalignment(0.3, 0.1, 0.8) == pytest.approx(0.8 * 0.5**2)


def test_summary_scores_a_frozen_text_tower_by_its_structure_change():
    img0 = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    moved = _unit([1, 0.5, 0], [0, 1, 0.5], [0.5, 0, 1])
    s = alignment.summarise(moved, img0, img0, img0, ["a", "b", "c"], base_scale=10.0)
    assert s["text_drift"] == pytest.approx(0.0, abs=1e-6)
    assert s["misalignment"] == pytest.approx(s["structure_kl"]) and s["misalignment"] > 0
