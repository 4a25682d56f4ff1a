"""Alignment and misalignment measures on probe embeddings. Pure: tensors in, floats out.

All embeddings are unit-normalised; row i of `img` and row i of `txt` are a matched pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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


def recall_at_k(
    img: torch.Tensor, txt: torch.Tensor, texts: Sequence[str], k: int
) -> tuple[float, float]:
    """R@k image->text and text->image. Identical texts are one text with several images."""
    unique = list(dict.fromkeys(texts))
    index = torch.tensor([unique.index(t) for t in texts])
    first = [texts.index(t) for t in unique]
    sim = img @ txt[first].t()  # [N, U]
    k_i = min(k, len(unique))
    hit_i2t = (sim.topk(k_i, dim=1).indices == index[:, None]).any(dim=1)
    k_t = min(k, img.shape[0])
    top_images = sim.t().topk(k_t, dim=1).indices  # [U, k]
    hit_t2i = (index[top_images] == torch.arange(len(unique))[:, None]).any(dim=1)
    return float(hit_i2t.float().mean()), float(hit_t2i.float().mean())


def drift(now: torch.Tensor, base: torch.Tensor) -> float:
    """1 − mean cos(f_t(x), f_0(x)): how far one tower moved from the base model."""
    return 1.0 - float((now * base).sum(dim=1).mean())


def structure_kl(
    img: torch.Tensor, txt: torch.Tensor, img0: torch.Tensor, txt0: torch.Tensor, scale: float
) -> float:
    """Mean row-wise KL(softmax(S_0) ‖ softmax(S_t)) of image->text similarities.

    One temperature (the base model's) for both, so only the structure counts.
    """
    log_p0 = F.log_softmax(scale * img0 @ txt0.t(), dim=1)  # [N, N]
    log_pt = F.log_softmax(scale * img @ txt.t(), dim=1)
    return float(F.kl_div(log_pt, log_p0, log_target=True, reduction="batchmean"))


def drift_asymmetry(image_drift: float, text_drift: float) -> float:
    """|d_img − d_txt| / (d_img + d_txt) in [0, 1]: 0 when both towers moved alike, 1 when one
    stood still. 0 when neither moved."""
    image_drift, text_drift = max(image_drift, 0.0), max(text_drift, 0.0)  # rounding below 0
    total = image_drift + text_drift
    return abs(image_drift - text_drift) / total if total > 1e-9 else 0.0


def misalignment(image_drift: float, text_drift: float, structure_kl: float) -> float:
    """The similarity-structure change from the base model, weighted by how one-sided it is.

    structure_kl × asymmetry²: with one tower frozen (asymmetry 1) the whole structure change
    counts; healthy joint training, where the image tower typically drifts 2–5× more than the
    text tower (asymmetry 0.3–0.7), is damped to a tenth to a half. In nats, like the KL.
    """
    return structure_kl * drift_asymmetry(image_drift, text_drift) ** 2


def summarise(
    img: torch.Tensor,
    txt: torch.Tensor,
    img0: torch.Tensor,
    txt0: torch.Tensor,
    texts: Sequence[str],
    base_scale: float,
) -> dict[str, float]:
    """Every alignment figure of one probe set, now (img, txt) against base (img0, txt0)."""
    unique_rows = [texts.index(t) for t in dict.fromkeys(texts)]
    r1_i2t, r1_t2i = recall_at_k(img, txt, texts, 1)
    r5_i2t, r5_t2i = recall_at_k(img, txt, texts, 5)
    image_drift, text_drift = drift(img, img0), drift(txt, txt0)
    kl = structure_kl(img, txt, img0, txt0, base_scale)
    return {
        "matched_cosine": matched_cosine(img, txt),
        "modality_gap": modality_gap(img, txt),
        "alignment": alignment(img, txt),
        "uniformity_image": uniformity(img),
        "uniformity_text": uniformity(txt[unique_rows]),
        "recall_at_1_image_to_text": r1_i2t,
        "recall_at_1_text_to_image": r1_t2i,
        "recall_at_5_image_to_text": r5_i2t,
        "recall_at_5_text_to_image": r5_t2i,
        "image_drift": image_drift,
        "text_drift": text_drift,
        "structure_kl": kl,
        "misalignment": misalignment(image_drift, text_drift, kl),
    }
