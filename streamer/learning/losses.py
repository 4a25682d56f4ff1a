"""Contrastive losses for online CLIP tuning. Pure functions: tensors in, scalar tensor out.

All embeddings are unit-normalised; `scale` is CLIP's temperature exp(logit_scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def unique_targets(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Batch-local text set in first-seen order, and each sample's index into it: [B]."""
    index: dict[str, int] = {}
    targets = [index.setdefault(t, len(index)) for t in texts]
    return list(index), torch.tensor(targets, dtype=torch.long)


def sit(
    img: torch.Tensor,
    txt: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor,
    both_directions: bool = True,
):
    """Symmetric image-text loss over the batch-local text set (Wang et al. 2024).

    img [B, D], txt [T, D] (unique texts of this batch), target [B] in [0, T).
    Images sharing a text are all positives of it (soft targets), never negatives.
    `both_directions=False`: image->text only, as in the paper; True adds text->image.
    """
    logits = scale * img @ txt.t()  # [B, T]
    image_to_text = F.cross_entropy(logits, target)
    if not both_directions:
        return image_to_text
    texts = torch.arange(txt.shape[0], device=target.device)
    positives = (texts[:, None] == target[None, :]).to(logits.dtype)  # [T, B], no read-back
    soft = positives / positives.sum(dim=1, keepdim=True).clamp(min=1.0)
    text_to_image = -(soft * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2


def clip(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor):
    """Plain in-batch InfoNCE: img [B, D] and txt [B, D] matched by row; duplicates negatives."""
    logits = scale * img @ txt.t()  # [B, B]
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def asymmetric(img: torch.Tensor, txt_all: torch.Tensor, target: torch.Tensor, scale: torch.Tensor):
    """Image->text only, over every text seen so far: the setting SIT fixes.

    img [B, D], txt_all [C, D] (all labels seen so far), target [B] in [0, C).
    """
    return F.cross_entropy(scale * img @ txt_all.t(), target)


def _row_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)); 0 with no rows."""
    if teacher.shape[0] == 0:
        return student.sum() * 0.0  # keeps the graph: a zero with a gradient path
    log_s, log_t = F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def structure(
    img: torch.Tensor,
    txt: torch.Tensor,
    target: torch.Tensor,
    img_t: torch.Tensor,
    txt_t: torch.Tensor,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """Mod-X (Ni et al. 2023): keep the whole similarity structure, off-diagonal included.

    img [B, D], txt [T, D] the student's; img_t, txt_t the teacher's (no gradient); target
    [B] in [0, T). KL(teacher || student) of every row of scale * img @ txt.T, image->text
    rows and text->image rows, averaged. A row the teacher got wrong (its largest entry is
    not a positive) is left out, as Mod-X's cognition alignment drops it. Mod-X softmaxes raw
    cosines: scale = 1 reproduces it.
    """
    student = scale * img @ txt.t()  # [B, T]
    teacher = (scale * img_t @ txt_t.t()).detach()
    rows = teacher.argmax(dim=1) == target  # image rows the teacher matched
    texts = torch.arange(txt.shape[0], device=target.device)
    columns = target[teacher.t().argmax(dim=1)] == texts  # text rows: best image is a positive
    image_side = _row_kl(teacher[rows], student[rows])
    text_side = _row_kl(teacher.t()[columns], student.t()[columns])
    return (image_side + text_side) / 2


def distill_logits(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """ZSCL (Zheng et al. 2023): the student's image-text logits toward the teacher's at
    temperature T, times T^2, in both directions.

    student, teacher [N, M]: scale * img @ txt.T on the same reference pairs. ZSCL's soft
    cross-entropy less the teacher's entropy (a constant): the same gradient, and 0 when
    the student is the teacher.
    """
    teacher = teacher.detach()

    def one_way(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _row_kl(t / temperature, s / temperature)

    both = one_way(student, teacher) + one_way(student.t(), teacher.t())
    return both / 2 * temperature**2


def l2_toward(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of squared differences between matching tensors (ZSCL's L2 toward a reference)."""
    squares = [(s - t.detach()).pow(2).sum() for s, t in zip(student, teacher, strict=True)]
    return torch.stack(squares).sum()
