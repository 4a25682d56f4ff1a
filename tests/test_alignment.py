"""Alignment measures and the misalignment diagnosis on embeddings whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from streamer.evaluation import alignment

THRESHOLD = 0.2  # deficit that alarms in these cases


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_perfectly_aligned_pairs():
    x = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    assert alignment.matched_cosine(x, x) == pytest.approx(1.0)
    assert alignment.modality_gap(x, x) == pytest.approx(0.0)
    assert alignment.alignment(x, x) == pytest.approx(0.0)
    assert alignment.drift(x, x) == pytest.approx(0.0, abs=1e-7)
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


def test_drift_sees_one_tower_move():
    img0 = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    rotated = _unit([0, 1, 0], [0, 0, 1], [1, 0, 0])
    assert alignment.drift(rotated, img0) == pytest.approx(1.0)
    s = alignment.summarise(rotated, img0, img0, img0, ["a", "b", "c"])
    assert s["image_drift"] == pytest.approx(1.0) and s["text_drift"] == pytest.approx(0.0)


def test_knn_leaves_each_image_out():
    img = _unit([1, 0], [1, 0.1], [0, 1], [0.1, 1])
    index = torch.tensor([0, 0, 1, 1])
    assert alignment.knn_hits(img, index, k=1).tolist() == [True] * 4
    # alone in its class, an image can only be voted into another class
    assert alignment.knn_hits(img, torch.tensor([0, 0, 1, 2]), k=1).tolist()[2:] == [False] * 2


# -- constructed cases: a base of ten well-separated classes, 20 probes each -----------------
D, CLASSES, PER_CLASS = 32, 10, 20


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed)))
    return q  # [D, D] orthogonal


@pytest.fixture(scope="module")
def base():
    """img0, txt0 [200, D] and texts: images noisy around their class, offset by a modality
    gap; texts at the class centres."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(CLASSES, D, generator=g), dim=1)
    gap = 0.5 * F.normalize(torch.randn(D, generator=g), dim=0)
    label = [c for c in range(CLASSES) for _ in range(PER_CLASS)]
    txt0 = centres[label]
    img0 = F.normalize(txt0 + 0.35 * torch.randn(len(label), D, generator=g) + gap, dim=1)
    return img0, txt0, [f"a photo of a {c}" for c in label]


def _near(x: torch.Tensor, noise: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return F.normalize(x + noise * torch.randn(x.shape, generator=g), dim=1)


def _diagnose(base, img, txt) -> alignment.Diagnosis:
    img0, txt0, texts = base
    return alignment.diagnose(img, txt, img0, txt0, texts, threshold=THRESHOLD)


def test_a_healthy_base_has_no_deficit(base):
    img0, txt0, _ = base
    d = _diagnose(base, img0, txt0)
    assert d.deficit < 0.05 and not d.alarm and d.blame == "none"
    assert d.classes == CLASSES and d.probes == CLASSES * PER_CLASS
    tight = _near(txt0, 0.05)
    assert _diagnose(base, tight, txt0).deficit == 0.0  # well separated: none at all


def test_both_towers_rotated_alike_stay_aligned(base):
    img0, txt0, _ = base
    r = _rotation(1)
    d = _diagnose(base, img0 @ r, txt0 @ r)
    assert not d.alarm and d.blame == "none"
    assert d.deficit == pytest.approx(_diagnose(base, img0, txt0).deficit, abs=1e-6)
    # swapping one tower back alone would break it: the swap sees both moved
    assert d.swap.image_base.accuracy < 0.3 and d.swap.text_base.accuracy < 0.3


def test_towers_rotated_differently_misalign_and_blame_both(base):
    img0, txt0, _ = base
    d = _diagnose(base, img0 @ _rotation(1), txt0 @ _rotation(2))
    assert d.alarm and d.deficit > 0.4
    assert d.blame == "both" and d.both_blame > 0.5
    assert d.swap.now.accuracy < 0.3 and d.swap.base.accuracy > 0.7


def test_the_image_tower_moved_onto_its_texts_stays_aligned(base):
    img0, txt0, _ = base
    moved = _near(txt0, 0.2)
    assert alignment.drift(moved, img0) > 0.2  # it did move
    d = _diagnose(base, moved, txt0)
    assert not d.alarm and d.deficit < 0.05 and d.blame == "none"
    assert d.swap.now.accuracy >= d.swap.base.accuracy


@pytest.mark.parametrize("tower", ["image", "text"])
def test_one_tower_rotated_misaligns_and_is_blamed(base, tower):
    img0, txt0, _ = base
    r = _rotation(3)
    img, txt = (img0 @ r, txt0) if tower == "image" else (img0, txt0 @ r)
    d = _diagnose(base, img, txt)
    assert d.alarm and d.deficit > 0.4 and d.blame == tower
    blames = {"image": d.image_blame, "text": d.text_blame}
    other = "text" if tower == "image" else "image"
    assert blames[tower] > 0.5 and abs(blames[other]) < 0.1
    assert d.top(3) and all(c.deficit > 0.2 for c in d.top(3))


def test_per_class_attribution_names_the_classes_that_lost_alignment(base):
    img0, txt0, texts = base
    broken = torch.tensor([t in ("a photo of a 3", "a photo of a 7") for t in texts])
    img = torch.where(broken[:, None], img0 @ _rotation(4), img0)  # only two classes moved
    d = alignment.diagnose(img, txt0, img0, txt0, texts, threshold=0.05)
    assert {c.text for c in d.top(2)} == {"a photo of a 3", "a photo of a 7"}
    assert all(c.image_recovery > 0.5 for c in d.top(2))
    assert len(d.by_class) == CLASSES and all(c.deficit < 0.15 for c in d.by_class[2:])
    assert d.alarm and d.blame == "image"  # the recovery is weighed where the deficit is


def test_block_attribution_ranks_the_block_whose_removal_repairs():
    norms = {("image", 0): 1.0, ("image", 1): 3.0, ("text", 0): 0.5, ("text", 1): 0.5}
    ranked = alignment.block_attribution(norms, 0.4, {("image", 0): 0.8, ("image", 1): 0.45})
    assert (ranked[0].tower, ranked[0].block) == ("image", 0)
    assert ranked[0].recovery == pytest.approx(0.4) and ranked[0].share == pytest.approx(0.25)
    only_norms = alignment.block_attribution(norms)
    assert (only_norms[0].block, only_norms[0].recovery) == (1, None)
    assert sum(b.share for b in only_norms if b.tower == "text") == pytest.approx(1.0)


def test_a_concept_the_base_never_aligned_is_deficit_but_carries_no_blame(base):
    img0, txt0, texts = base
    g = torch.Generator().manual_seed(6)
    new = torch.tensor([int(t.split()[-1]) >= 5 for t in texts])  # classes 5-9: new concepts
    stray = F.normalize(torch.randn(CLASSES, D, generator=g), dim=1)
    label = torch.tensor([int(t.split()[-1]) for t in texts])
    txt0 = torch.where(new[:, None], stray[label], txt0)  # the base's texts miss them
    img = torch.where(new[:, None], img0, img0 @ _rotation(7))  # old concepts: image moved
    d = alignment.diagnose(img, txt0, img0, txt0, texts, threshold=THRESHOLD)
    unlearned = [c for c in d.by_class if int(c.text.split()[-1]) >= 5]
    assert d.alarm and all(c.both_recovery <= 0 for c in unlearned)
    assert 0.2 < d.lost < d.deficit - 0.1  # part of the deficit is lost, part never learned
    assert d.blame == "image" and d.image_blame > 0.5


# -- the same cases over many worlds: 10 classes, few probes each, 50 seeds ------------------
SEEDS = range(50)
FEW = 5  # probes per class: chance recoveries are large, so the blame must not hang on them


def _world(seed: int, per_class: int = FEW):
    """A base (img0, txt0, texts) drawn from `seed`, and a generator for the moves on it."""
    g = torch.Generator().manual_seed(1000 + seed)
    centres = F.normalize(torch.randn(CLASSES, D, generator=g), dim=1)
    gap = 0.5 * F.normalize(torch.randn(D, generator=g), dim=0)
    label = [c for c in range(CLASSES) for _ in range(per_class)]
    txt0 = centres[label]
    img0 = F.normalize(txt0 + 0.35 * torch.randn(len(label), D, generator=g) + gap, dim=1)
    return img0, txt0, [f"a photo of a {c}" for c in label], g


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(D, D, generator=g))[0]


def _diagnoses(move, per_class: int = FEW) -> list[alignment.Diagnosis]:
    """move(img0, txt0, g) -> (img, txt), diagnosed against the base in every world."""
    out = []
    for seed in SEEDS:
        img0, txt0, texts, g = _world(seed, per_class)
        img, txt = move(img0, txt0, g)
        out.append(alignment.diagnose(img, txt, img0, txt0, texts, threshold=THRESHOLD))
    return out


def test_two_towers_rotated_differently_blame_both_in_every_world():
    found = _diagnoses(lambda i, t, g: (i @ _random_rotation(g), t @ _random_rotation(g)))
    assert [d.blame for d in found] == ["both"] * len(SEEDS)
    # restoring both recovers clearly more than restoring either one
    assert all(d.both_blame - max(d.image_blame, d.text_blame) >= 0.1 for d in found)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_one_tower_rotated_blames_that_tower_in_every_world(tower):
    def move(i, t, g):
        r = _random_rotation(g)
        return (i @ r, t) if tower == "image" else (i, t @ r)

    found = _diagnoses(move)
    assert all(d.alarm for d in found) and [d.blame for d in found] == [tower] * len(SEEDS)


def test_a_shared_rotation_stays_aligned_in_every_world():
    def move(i, t, g):
        r = _random_rotation(g)
        return i @ r, t @ r

    found = _diagnoses(move)
    assert [(d.alarm, d.blame, d.collapsed) for d in found] == [(False, "none", False)] * 50


def test_the_image_tower_moved_onto_its_texts_stays_aligned_in_every_world():
    found = _diagnoses(lambda i, t, g: (F.normalize(t + 0.2 * torch.randn(t.shape, generator=g),
                                                    dim=1), t))  # fmt: skip
    assert [(d.alarm, d.blame, d.collapsed) for d in found] == [(False, "none", False)] * 50


def test_a_collapsing_image_tower_is_flagged_though_the_deficit_cannot_see_it():
    """All images shrunk toward one point plus noise: R@1 near chance, and the images' own
    separability falls with it, so the deficit stays low; the collapse signal fires."""

    def move(i, t, g):
        point = F.normalize(torch.randn(D, generator=g), dim=0)
        return F.normalize(point + 0.05 * i + 0.05 * torch.randn(i.shape, generator=g), dim=1), t

    found = _diagnoses(move, PER_CLASS)  # 20 a class: the base's kNN separates well
    assert all(d.collapsed and d.collapse > 0.3 for d in found)
    assert all(d.swap.now.accuracy <= 0.3 for d in found)  # cross-modal: near chance (0.1)
    assert not any(d.alarm for d in found)  # the misalignment alarm alone would miss it


def test_a_healthy_tower_has_no_collapse(base):
    img0, txt0, _ = base
    d = _diagnose(base, img0, txt0)
    assert d.separable_base == pytest.approx(d.separable) and d.collapse == 0.0
    assert not d.collapsed
