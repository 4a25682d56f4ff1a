"""Regularizers toward a teacher, added to the training loss (config learner.regularizer).

- structure, Mod-X (Ni et al. 2023): needs the teacher's embeddings of the step's batch;
  costs a teacher forward of the batch and a student text forward per update.
- logits, ZSCL (Zheng et al. 2023): needs reference pairs (replay or a manifest); costs a
  student and a teacher forward of `batch` pairs per update.
- l2, ZSCL's L2 baseline: needs the teacher's weights; costs the sum only.

The teacher is a view of the trainable state (teachers.py): the frozen base, an EMA, or the
model as it was when the last window closed. The step's SIT loss is unchanged: the term is
added with weight lambda.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from streamer.config.strategies import RegularizerConfig
from streamer.learning import losses
from streamer.learning.model import ClipModel
from streamer.learning.precision import upload
from streamer.learning.teachers import Teachers
from streamer.records import Pair

References = Callable[[int, random.Random], list[Pair]]  # k reference pairs, drawn with rng


class Regularizer:
    def __init__(
        self,
        cfg: RegularizerConfig,
        model: ClipModel,
        teachers: Teachers,
        references: References | None,
        prompt_template: str,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.teachers = teachers
        self._references = references
        self._template = prompt_template
        self._rng = random.Random(f"regularizer-{seed}")  # which reference pairs

    def term(
        self, pixels: torch.Tensor, img: torch.Tensor, prompts: list[str], scale: torch.Tensor
    ) -> torch.Tensor:
        """lambda * the term, for the update on `pixels` [B, 3, H, W] (img [B, D] the student's
        embeddings of them, prompts their texts)."""
        if self.cfg.kind == "l2":
            now = self.teachers.current(grad=True)
            teacher = self.teachers.pieces(self.cfg.teacher)
            value = losses.l2_toward(list(now.values()), [teacher[n] for n in now])
        elif self.cfg.kind == "structure":
            value = self._structure(pixels, img, prompts, scale)
        else:
            value = self._logits(scale, prompts if self.cfg.texts == "reference+batch" else [])
        return self.cfg.weight * value

    def _structure(self, pixels, img, prompts, scale) -> torch.Tensor:
        texts, target = losses.unique_targets(prompts)
        txt = self.model.encode_texts(texts)  # [T, D] the student's, with its gradient
        with self.teachers.view(self.cfg.teacher) as net:
            img_t = self.model.encode_images(pixels, net)  # [B, D]
            txt_t = self.model.encode_texts(texts, net)  # [T, D]
        target = upload(target, img.device)
        return losses.structure(img, txt, target, img_t, txt_t, scale / self.cfg.temperature)

    def _logits(self, scale: torch.Tensor, extra: list[str]) -> torch.Tensor:
        """extra: texts scored beside the reference pairs' own (the step's: new labels)."""
        pairs = self._references(self.cfg.batch, self._rng) if self._references else []
        if not pairs:
            return scale * 0.0  # nothing to distil on yet: a zero with a gradient path
        own = [p.sample.prompt(self._template) for p in pairs]
        texts, _ = losses.unique_targets(own + extra)
        pixels = self.model.stack_pixels([p.pixels for p in pairs])
        student = scale * self.model.encode_images(pixels) @ self.model.encode_texts(texts).t()
        with self.teachers.view(self.cfg.teacher) as net:
            img_t = self.model.encode_images(pixels, net)
            teacher = scale * img_t @ self.model.encode_texts(texts, net).t()  # [N, T]
        return losses.distill_logits(student, teacher, self.cfg.temperature)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            version, internal, gauss = state["rng"]
            self._rng.setstate((version, tuple(internal), gauss))
