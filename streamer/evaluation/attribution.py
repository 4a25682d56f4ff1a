"""Per-block attribution: which blocks of which tower moved, and which would repair the
alignment if switched off. Needs forward passes (one per block), so it runs every
`evaluation.attribution_every` evaluations.

With LoRA, a block's shift is ‖scale · B A‖ of its adapters and "off" means those adapters
switched off (the rest of the model as it is); in other modes the shift is ‖W − W_base‖ over
the block's weights and there is no switch (recovery None).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from streamer.evaluation.alignment import BlockShift, block_attribution, text_index, top1_hits
from streamer.evaluation.probes import Embedded, ProbeEmbeddings
from streamer.learning.model import ClipModel
from streamer.learning.peft import adapters_disabled, block_adapters, block_shift, delta_norm
from streamer.records import Sample


def attribute(
    model: ClipModel, embeddings: ProbeEmbeddings, samples: Sequence[Sample], emb: Embedded
) -> tuple[BlockShift, ...]:
    """Blocks ranked by how much switching them off recovers probe top-1, then by share."""
    adapters = block_adapters(model.net)
    if not adapters:
        base = model.frozen_base
        return block_attribution(block_shift(model.net, base)) if base is not None else ()
    norms = {key: delta_norm(deltas) for key, deltas in adapters.items()}
    index, first = text_index(emb.texts)
    now = _accuracy(emb.img, emb.txt[first], index)
    texts = [emb.texts[i] for i in first]
    off = {}
    for (tower, block), deltas in adapters.items():
        with adapters_disabled(model.net, deltas):
            if tower == "image":
                off[(tower, block)] = _accuracy(embeddings.encode_images(samples),
                                                emb.txt[first], index)  # fmt: skip
            else:
                off[(tower, block)] = _accuracy(emb.img, embeddings.encode_texts(texts), index)
    return block_attribution(norms, now, off)


def _accuracy(img: torch.Tensor, unique_txt: torch.Tensor, index: torch.Tensor) -> float:
    """Top-1 of each probe image among the probes' unique texts: img [N, D], txt [U, D]."""
    hits = top1_hits(img, unique_txt, index, list(range(unique_txt.shape[0])))
    return float(hits.float().mean())
