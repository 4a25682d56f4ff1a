"""Alignment measures and the misalignment diagnosis on probe embeddings. Pure: tensors in,
floats and frozen dataclasses out.

All embeddings are unit-normalised; row i of `img` and row i of `txt` are a matched pair, and
identical texts are one text (one class) with several images. `img0`, `txt0` are the same
probes embedded by the base model.

Misalignment means the two towers no longer match on a concept; it is not the same as one
tower moving (a tower may move onto its texts and stay aligned). The diagnosis therefore asks:
- the *deficit* (base-free): how far cross-modal accuracy falls short of what the image
  embeddings alone separate (leave-one-out kNN by text), per class, clamped at 0, averaged
  over classes: in [0, 1], about the model now, so it does not grow through a long run;
- the *tower swap*: accuracy with each tower swapped back to the base; a tower's blame is what
  that swap recovers on the classes in deficit;
- the *collapse*, which the deficit cannot see (cross-modal accuracy and the images' own
  separability fall together): the kNN separability the image tower lost against the base's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Blame = Literal["image", "text", "both", "none"]
KNN_K = 5  # neighbours of the leave-one-out image classifier
BLAME_MARGIN = 0.1  # recovery (accuracy) a swap must bring, and lead the other tower's by
COLLAPSE_THRESHOLD = 0.2  # separability lost (kNN top-1, base minus now) that counts as collapse


def matched_cosine(img: torch.Tensor, txt: torch.Tensor) -> float:
    """Mean cosine of matched pairs: img [N, D], txt [N, D]."""
    return float((img * txt).sum(dim=1).mean())


def modality_gap(img: torch.Tensor, txt: torch.Tensor) -> float:
    """‖mean(img) − mean(txt)‖ between the two modalities' centroids (Liang et al. 2022)."""
    return float((img.mean(dim=0) - txt.mean(dim=0)).norm())


def alignment(img: torch.Tensor, txt: torch.Tensor) -> float:
    """E‖x − y‖² over matched pairs (Wang & Isola 2020); lower is better aligned."""
    return float((img - txt).pow(2).sum(dim=1).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(−t‖u − v‖²) over distinct pairs of x [N, D] (Wang & Isola 2020)."""
    if x.shape[0] < 2:
        return 0.0
    sq = torch.pdist(x.float(), p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - torch.log(torch.tensor(float(sq.numel()))))


def text_index(texts: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
    """Class of each row [N] (its unique text's number) and the first row of each text [U]."""
    unique = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    first: dict[str, int] = {}
    for row, t in enumerate(texts):
        first.setdefault(t, row)
    return torch.tensor([unique[t] for t in texts], dtype=torch.long), list(first.values())


def recall_at_k(
    img: torch.Tensor, txt: torch.Tensor, texts: Sequence[str], k: int
) -> tuple[float, float]:
    """R@k image->text and text->image. Identical texts are one text with several images."""
    index, first = text_index(texts)
    sim = img @ txt[first].t()  # [N, U]
    hit_i2t = (sim.topk(min(k, len(first)), dim=1).indices == index[:, None]).any(dim=1)
    top_images = sim.t().topk(min(k, img.shape[0]), dim=1).indices  # [U, k]
    hit_t2i = (index[top_images] == torch.arange(len(first))[:, None]).any(dim=1)
    return float(hit_i2t.float().mean()), float(hit_t2i.float().mean())


def drift(now: torch.Tensor, base: torch.Tensor) -> float:
    """1 − mean cos(f_t(x), f_0(x)): how far one tower moved from the base model."""
    return 1.0 - float((now * base).sum(dim=1).mean())


def summarise(
    img: torch.Tensor, txt: torch.Tensor, img0: torch.Tensor, txt0: torch.Tensor,
    texts: Sequence[str],
) -> dict[str, float]:  # fmt: skip
    """The descriptive alignment figures of one probe set, and each tower's drift."""
    _, first = text_index(texts)
    r1_i2t, r1_t2i = recall_at_k(img, txt, texts, 1)
    r5_i2t, r5_t2i = recall_at_k(img, txt, texts, 5)
    return {
        "matched_cosine": matched_cosine(img, txt),
        "modality_gap": modality_gap(img, txt),
        "alignment": alignment(img, txt),
        "uniformity_image": uniformity(img),
        "uniformity_text": uniformity(txt[first]),
        "recall_at_1_image_to_text": r1_i2t,
        "recall_at_1_text_to_image": r1_t2i,
        "recall_at_5_image_to_text": r5_i2t,
        "recall_at_5_text_to_image": r5_t2i,
        "image_drift": drift(img, img0),
        "text_drift": drift(txt, txt0),
    }


# -- the diagnosis ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Retrieval:
    """One pairing of an image tower with a text tower on the probes."""

    accuracy: float  # top-1 image -> text among the probes' unique texts (R@1 image->text)
    recall_text_to_image: float  # R@1 text -> image


@dataclass(frozen=True)
class TowerSwap:
    now: Retrieval  # (image now, text now)
    text_base: Retrieval  # (image now, text base): the text tower swapped back
    image_base: Retrieval  # (image base, text now): the image tower swapped back
    base: Retrieval  # (image base, text base)


@dataclass(frozen=True)
class ClassAlignment:
    """One class (one unique text) with at least two probes."""

    text: str
    probes: int
    separable: float  # leave-one-out kNN accuracy of its images, image tower alone
    accuracy: float  # cross-modal top-1 now
    deficit: float  # max(0, separable − accuracy)
    image_recovery: float  # accuracy with the image tower swapped back to the base, minus now
    text_recovery: float  # ... with the text tower swapped back
    both_recovery: float  # ... with both swapped back


@dataclass(frozen=True)
class Diagnosis:
    probes: int
    classes: int  # classes with at least two probes: the ones judged
    swap: TowerSwap
    separable: float  # mean over judged classes of the kNN accuracy
    deficit: float  # mean over judged classes of their deficit, in [0, 1]
    lost: float  # the part of `deficit` on classes a swap back to the base improves
    image_blame: float  # over those classes, the deficit-weighted image recovery
    text_blame: float
    both_blame: float
    alarm: bool  # deficit above the threshold
    blame: Blame  # "none" without an alarm, or when no swap recovers the margin
    separable_base: float  # the same kNN accuracy on the base's image embeddings
    collapse: float  # max(0, separable_base - separable): the image tower's own structure lost
    collapsed: bool  # collapse above its threshold, whatever the deficit says
    by_class: tuple[ClassAlignment, ...]  # every judged class, largest deficit first

    def top(self, k: int) -> tuple[ClassAlignment, ...]:
        """The k classes that lost most alignment (bounded labels for metrics)."""
        return tuple(c for c in self.by_class[:k] if c.deficit > 0)


def top1_hits(
    img: torch.Tensor, txt: torch.Tensor, index: torch.Tensor, first: list[int]
) -> torch.Tensor:
    """Per probe [N] bool: is its own text the nearest of the unique texts txt[first]?"""
    return (img @ txt[first].t()).argmax(dim=1) == index  # [N, U] -> [N]


def knn_hits(img: torch.Tensor, index: torch.Tensor, k: int = KNN_K) -> torch.Tensor:
    """Leave-one-out kNN by class [N] bool: do the k nearest other images vote for its class?
    Ties go to the class of the nearer neighbours."""
    n, k = img.shape[0], min(k, img.shape[0] - 1)
    if k < 1:
        return torch.zeros(n, dtype=torch.bool)
    sim = img @ img.t()  # [N, N]
    sim.fill_diagonal_(-float("inf"))
    nearest = sim.topk(k, dim=1).indices  # [N, k], nearest first
    weight = 1.0 + 1e-3 * torch.arange(k, 0, -1, dtype=img.dtype)  # [k]: counts, then ranks
    votes = torch.zeros(n, int(index.max()) + 1, dtype=img.dtype)  # [N, U]
    votes.scatter_add_(1, index[nearest], weight.expand(n, k).contiguous())
    return votes.argmax(dim=1) == index


def _mean(hits: torch.Tensor) -> float:
    return float(hits.float().mean())


def _per_class(texts, index, knn, now, swapped) -> list[ClassAlignment]:
    """swapped: hits [N] with the image tower, the text tower, both swapped back."""
    out = []
    for u in range(int(index.max()) + 1):
        rows = index == u
        if int(rows.sum()) < 2:
            continue  # a lone image has no neighbour of its class
        sep, acc = _mean(knn[rows]), _mean(now[rows])
        image, text, both = (_mean(hits[rows]) - acc for hits in swapped)
        out.append(ClassAlignment(texts[int(rows.nonzero()[0])], int(rows.sum()), sep, acc,
                                  max(0.0, sep - acc), image, text, both))  # fmt: skip
    return sorted(out, key=lambda c: (-c.deficit, c.text))


def _blame(image: float, text: float, both: float, alarm: bool, margin: float) -> Blame:
    """Both towers when restoring both clearly beats restoring either (two moves that each
    break the match alone: one swap recovers only chance); else the tower whose swap leads."""
    if not alarm:
        return "none"
    if both >= margin and both - max(image, text) >= margin:
        return "both"
    if image >= margin and image - text >= margin:
        return "image"
    if text >= margin and text - image >= margin:
        return "text"
    return "both" if max(image, text, both) >= margin else "none"


def _lost(c: ClassAlignment) -> bool:
    """In deficit, and some swap back to the base improves it: alignment the base had. A class
    the base did not align either (a new concept being learned) carries no blame."""
    return c.deficit > 0 and max(c.image_recovery, c.text_recovery, c.both_recovery) > 0


def _weighted(classes: Sequence[ClassAlignment], recovery) -> float:
    """Deficit-weighted mean of a recovery: what a swap repairs where alignment was lost."""
    total = sum(c.deficit for c in classes)
    return sum(c.deficit * recovery(c) for c in classes) / total if total > 0 else 0.0


def diagnose(
    img: torch.Tensor, txt: torch.Tensor, img0: torch.Tensor, txt0: torch.Tensor,
    texts: Sequence[str], threshold: float, margin: float = BLAME_MARGIN, k: int = KNN_K,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
) -> Diagnosis:  # fmt: skip
    """Which tower, if any, broke the image-text match: img, txt, img0, txt0 [N, D]."""
    index, first = text_index(texts)
    now = top1_hits(img, txt, index, first)
    image_back = top1_hits(img0, txt, index, first)
    text_back = top1_hits(img, txt0, index, first)
    both_back = top1_hits(img0, txt0, index, first)
    knn = knn_hits(img, index, k)
    classes = _per_class(texts, index, knn, now, (image_back, text_back, both_back))
    lost = [c for c in classes if _lost(c)]
    image = _weighted(lost, lambda c: c.image_recovery)
    text = _weighted(lost, lambda c: c.text_recovery)
    both = _weighted(lost, lambda c: c.both_recovery)
    n = max(len(classes), 1)
    deficit = sum(c.deficit for c in classes) / n  # [0, 1]
    separable = sum(c.separable for c in classes) / n
    separable_base = _class_mean(knn_hits(img0, index, k), index)
    alarm = deficit > threshold
    swap = TowerSwap(
        now=_retrieval(img, txt, texts, now),
        text_base=_retrieval(img, txt0, texts, text_back),
        image_base=_retrieval(img0, txt, texts, image_back),
        base=_retrieval(img0, txt0, texts, both_back),
    )
    return Diagnosis(
        probes=len(texts), classes=len(classes), swap=swap,
        separable=separable, deficit=deficit, lost=sum(c.deficit for c in lost) / n,
        image_blame=image, text_blame=text, both_blame=both, alarm=alarm,
        blame=_blame(image, text, both, alarm, margin), separable_base=separable_base,
        collapse=max(0.0, separable_base - separable),
        collapsed=separable_base - separable > collapse_threshold, by_class=tuple(classes),
    )  # fmt: skip


def _class_mean(hits: torch.Tensor, index: torch.Tensor) -> float:
    """Mean of hits [N] over the judged classes (two probes or more)."""
    means = [_mean(hits[index == u]) for u in index.unique() if int((index == u).sum()) > 1]
    return sum(means) / max(len(means), 1)


def _retrieval(img, txt, texts, hits) -> Retrieval:
    return Retrieval(_mean(hits), recall_at_k(img, txt, texts, 1)[1])


# -- per-block attribution (the model side measures; this ranks) ---------------------------
@dataclass(frozen=True)
class BlockShift:
    tower: str  # "image" or "text"
    block: int
    delta_norm: float  # ‖ΔW‖ of the block's adapters (LoRA: ‖scale · B A‖)
    share: float  # of its tower's total delta norm
    recovery: float | None  # accuracy with this block's adapters off, minus now


def block_attribution(
    norms: Mapping[tuple[str, int], float],
    accuracy_now: float | None = None,
    accuracy_off: Mapping[tuple[str, int], float] | None = None,
) -> tuple[BlockShift, ...]:
    """Which blocks of which tower moved, and which ones switching off would repair; most
    repairing first, then largest share."""
    totals: dict[str, float] = {}
    for (tower, _), norm in norms.items():
        totals[tower] = totals.get(tower, 0.0) + norm
    off = accuracy_off or {}
    out = [
        BlockShift(tower, block, norm, norm / totals[tower] if totals[tower] > 0 else 0.0,
                   off[(tower, block)] - accuracy_now
                   if accuracy_now is not None and (tower, block) in off else None)
        for (tower, block), norm in norms.items()
    ]  # fmt: skip
    return tuple(sorted(out, key=lambda b: (-(b.recovery or 0.0), -b.share, b.tower, b.block)))
