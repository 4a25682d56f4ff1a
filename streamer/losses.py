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


def sit(img: torch.Tensor, txt: torch.Tensor, target: torch.Tensor, scale: torch.Tensor):
    """Symmetric image-text loss over the batch-local text set (Wang et al. 2024).

    img [B, D], txt [T, D] (unique texts of this batch), target [B] in [0, T).
    Images sharing a text are all positives of it (soft targets), never negatives.
    """
    logits = scale * img @ txt.t()  # [B, T]
    image_to_text = F.cross_entropy(logits, target)
    positives = F.one_hot(target, txt.shape[0]).t().to(logits.dtype)  # [T, B]
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
