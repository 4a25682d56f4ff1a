"""The three losses against naive loop-based references on random tensors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from streamer.learning import losses


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def _log_softmax_entry(row: list[float], i: int) -> float:
    m = max(row)
    return row[i] - m - math.log(sum(math.exp(v - m) for v in row))


def naive_sit(img, txt, target, scale) -> float:
    b, t = img.shape[0], txt.shape[0]
    sim = [[scale * float(img[i] @ txt[j]) for j in range(t)] for i in range(b)]
    i2t = -sum(_log_softmax_entry(sim[i], int(target[i])) for i in range(b)) / b
    t2i = 0.0
    for j in range(t):
        column = [sim[i][j] for i in range(b)]
        positives = [i for i in range(b) if int(target[i]) == j]
        t2i -= sum(_log_softmax_entry(column, i) for i in positives) / len(positives)
    return (i2t + t2i / t) / 2


def naive_clip(img, txt, scale) -> float:
    b = img.shape[0]
    sim = [[scale * float(img[i] @ txt[j]) for j in range(b)] for i in range(b)]
    i2t = -sum(_log_softmax_entry(sim[i], i) for i in range(b)) / b
    t2i = -sum(_log_softmax_entry([sim[i][j] for i in range(b)], j) for j in range(b)) / b
    return (i2t + t2i) / 2


def naive_asymmetric(img, txt_all, target, scale) -> float:
    sim = [[scale * float(x @ y) for y in txt_all] for x in img]
    return -sum(_log_softmax_entry(row, int(t)) for row, t in zip(sim, target, strict=True)) / len(
        sim
    )


def test_sit_matches_naive_reference_with_duplicate_labels():
    prompts = ["cat", "dog", "cat", "bird", "dog", "cat", "fish", "bird"]
    texts, target = losses.unique_targets(prompts)
    assert texts == ["cat", "dog", "bird", "fish"]
    img, txt = _unit(8, 16, 0), _unit(4, 16, 1)
    scale = torch.tensor(10.0)
    got = float(losses.sit(img, txt, target, scale))
    assert math.isclose(got, naive_sit(img, txt, target, 10.0), rel_tol=1e-5)


def test_sit_treats_same_label_images_as_positives_not_negatives():
    # Two images of one class, perfectly matched: duplicates must not be pushed apart.
    txt = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    img = torch.stack([txt[0], txt[0], txt[1]])
    target = torch.tensor([0, 0, 1])
    with_duplicates = float(losses.sit(img, txt, target, torch.tensor(50.0)))
    as_negatives = float(losses.clip(img, txt[target], torch.tensor(50.0)))
    # SIT: only text 0's soft target over its two images costs anything (entropy log 2),
    # averaged over 2 texts and 2 directions. CLIP also pays log 2 for each duplicate row.
    assert math.isclose(with_duplicates, math.log(2) / 4, rel_tol=1e-4)
    assert math.isclose(as_negatives, 2 * math.log(2) / 3, rel_tol=1e-4)


def test_clip_matches_naive_reference():
    img, txt = _unit(6, 8, 2), _unit(6, 8, 3)
    got = float(losses.clip(img, txt, torch.tensor(7.0)))
    assert math.isclose(got, naive_clip(img, txt, 7.0), rel_tol=1e-5)


def test_asymmetric_matches_naive_reference():
    img, txt_all = _unit(5, 8, 4), _unit(9, 8, 5)
    target = torch.tensor([0, 3, 8, 3, 1])
    got = float(losses.asymmetric(img, txt_all, target, torch.tensor(12.0)))
    assert math.isclose(got, naive_asymmetric(img, txt_all, target, 12.0), rel_tol=1e-5)


def test_sit_gradient_reaches_both_embeddings():
    img = _unit(6, 8, 6).requires_grad_(True)
    txt = _unit(3, 8, 7).requires_grad_(True)
    losses.sit(img, txt, torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor(5.0)).backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0
