"""Probe embeddings for the evaluator: the model now and the base model, in batches.

The base model never changes, so its embeddings of a probe are computed once and kept by
probe id (only for probes still held); a restore recomputes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from streamer.evaluation.forgetting import Cell
from streamer.learning.model import ClipModel
from streamer.records import Sample


@dataclass(frozen=True)
class Embedded:
    """One evaluation's probes: rows in the order of `texts`."""

    texts: list[str]  # the prompt of each probe (label prompt, or caption)
    img: torch.Tensor  # [N, D] now
    txt: torch.Tensor  # [N, D] now
    img0: torch.Tensor  # [N, D] base
    txt0: torch.Tensor  # [N, D] base


class ProbeEmbeddings:
    def __init__(
        self,
        model: ClipModel,
        to_pixels: Callable[[Sample], torch.Tensor],
        prompt_template: str,
        batch_size: int,
    ) -> None:
        self.model = model
        self._to_pixels = to_pixels
        self._template = prompt_template
        self.batch_size = batch_size
        self._base: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (img0, txt0)

    @torch.no_grad()
    def embed(self, samples: Sequence[Sample]) -> Embedded:
        img, txt = self._encode(samples, None)
        missing = [s for s in samples if s.id not in self._base]
        if missing:
            with self.model.base() as base:
                img0, txt0 = self._encode(missing, base)
            self._base.update({s.id: (img0[i], txt0[i]) for i, s in enumerate(missing)})
        self._base = {s.id: self._base[s.id] for s in samples}  # forget evicted probes
        img0 = torch.stack([self._base[s.id][0] for s in samples])
        txt0 = torch.stack([self._base[s.id][1] for s in samples])
        return Embedded([s.prompt(self._template) for s in samples], img, txt, img0, txt0)

    @torch.no_grad()
    def hits(self, emb: Embedded, candidates: Sequence[str], base: bool) -> list[bool]:
        """Per probe: is its own text the top-1 among `candidates` (now, or on the base)?"""
        if base:
            with self.model.base() as net:
                cand = self._encode_texts(candidates, net)  # [C, D]
            predicted = (emb.img0 @ cand.t()).argmax(dim=1).tolist()
        else:
            cand = self._encode_texts(candidates, None)
            predicted = (emb.img @ cand.t()).argmax(dim=1).tolist()
        return [candidates[p] == t for p, t in zip(predicted, emb.texts, strict=True)]

    def forget(self) -> None:
        self._base = {}

    def _encode(self, samples: Sequence[Sample], net) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.net.eval()
        imgs, txts = [], []
        for i in range(0, len(samples), self.batch_size):
            chunk = samples[i : i + self.batch_size]
            pixels = torch.stack([self._to_pixels(s) for s in chunk])
            imgs.append(self.model.encode_images(pixels, net).cpu())
            txts.append(self.model.encode_texts([s.prompt(self._template) for s in chunk], net))
        return torch.cat(imgs), torch.cat(txts).cpu()

    @torch.no_grad()
    def encode_images(self, samples: Sequence[Sample]) -> torch.Tensor:
        """Image embeddings [N, D] of the model as it is now (adapters as they are set)."""
        self.model.net.eval()
        step = self.batch_size
        return torch.cat([
            self.model.encode_images(torch.stack([self._to_pixels(s) for s in
                                                  samples[i : i + step]])).cpu()
            for i in range(0, len(samples), step)
        ])  # fmt: skip

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self._encode_texts(texts, None)

    def _encode_texts(self, texts: Sequence[str], net) -> torch.Tensor:
        step = self.batch_size
        return torch.cat(
            [self.model.encode_texts(texts[i : i + step], net).cpu()
             for i in range(0, len(texts), step)]
        )  # fmt: skip


def hits_by_group(hits: Sequence[bool], groups: Sequence[str | None]) -> dict[str, Cell]:
    """Accuracy and count per group (window or class); rows of group None are skipped."""
    counts: dict[str, list[int]] = {}
    for hit, group in zip(hits, groups, strict=True):
        if group is not None:
            tally = counts.setdefault(group, [0, 0])
            tally[0], tally[1] = tally[0] + int(hit), tally[1] + 1
    return {g: Cell(right / n, n) for g, (right, n) in counts.items()}
