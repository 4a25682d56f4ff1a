"""The online learner: score a fresh batch, then learn from it mixed with replay.

Knows nothing of Kafka, metrics or files: batches in, StepResult out.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from streamer.config import LearnerConfig
from streamer.learning import losses
from streamer.learning.batches import UpdateBatches
from streamer.learning.distributed import World
from streamer.learning.labels import LabelSet
from streamer.learning.lora import adapters_cast
from streamer.learning.model import ClipModel
from streamer.learning.peft import lora_modules
from streamer.learning.precision import upload
from streamer.learning.rehearsal import Rehearsal
from streamer.learning.replay import ReplayBuffer
from streamer.learning.strategies import Regularizer
from streamer.learning.teachers import Teachers
from streamer.records import Pair, Sample, StepResult

PARTS = ("teachers", "regularizer", "rehearsal")  # optional parts with a state of their own


class Learner:
    def __init__(
        self,
        model: ClipModel,
        replay: ReplayBuffer,
        cfg: LearnerConfig,
        to_pair: Callable[[Sample], Pair],
        clock: Callable[[], float] = time.perf_counter,
        world: World | None = None,
        gather_features: bool = False,
        teachers: Teachers | None = None,
        regularizer: Regularizer | None = None,
        rehearsal: Rehearsal | None = None,
    ) -> None:
        self.model = model
        self.world = world or World()  # gradients are averaged over its ranks
        self.teachers = teachers  # EMA and window snapshots, kept up to date here
        self.regularizer = regularizer  # a term toward a teacher (None: SIT alone)
        self.rehearsal = rehearsal  # pairs of the base's domain in every update
        self.gather_features = gather_features
        self.replay = replay
        self.cfg = cfg
        self._to_pair = to_pair  # decodes replayed samples of the encoded store
        self._clock = clock
        self._model_seconds = 0.0  # this step's time in the model's own work
        self._batches = UpdateBatches(model)  # fresh rows once a step, replayed per update
        on_cuda = model.device.type == "cuda"
        if cfg.compile in ("on", "reduce-overhead"):  # auto: off until measured on a GPU
            model.compile("reduce-overhead" if cfg.compile == "reduce-overhead" else None)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_cuda)
        if self.bf16 and model.frozen_base is None:  # LoRA: the base is the frozen weights
            model.store_frozen(torch.bfloat16)  # no cast of the frozen weights per forward
        self._adapters = list(lora_modules(model.net))  # their factors cast once per update
        self._params = list(model.trainable_parameters().values())
        # Fused: a few kernels for all parameters; it skips a non-finite update on the device.
        self.optimizer = torch.optim.AdamW(
            self._params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
        )
        self.label_set = LabelSet(cfg.max_labels)  # scoring candidates, bounded
        self.steps = self.samples = self.skipped_nonfinite = 0

    @property
    def labels(self) -> list[str]:  # the label prompts held as scoring candidates, in order
        return self.label_set.labels

    def reconfigure(self, cfg: LearnerConfig) -> None:
        """Live tuning at a step boundary: optimizer settings and the step's shape."""
        self.cfg = cfg
        for group in self.optimizer.param_groups:
            group.update(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)

    def step(self, fresh: Sequence[Pair]) -> StepResult:
        """Test, then train: score the fresh batch, run the optimizer steps, then remember it.
        Figures stay on the device until the end of the step and come back in one read."""
        start, self._model_seconds = self._clock(), 0.0
        fresh_pixels = self._batches.stage(fresh, self.cfg.replay_per_step)  # once a step
        pre = self._score(fresh, fresh_pixels)  # (loss, accuracy) [2], on the device
        self._learn_labels(fresh)
        losses_, applied = [], []
        for _ in range(self.cfg.steps_per_batch):
            drawn = self._draw()
            pixels = self._batches.join(drawn)
            loss, ok = self._update([*fresh, *drawn], pixels)
            losses_.append(torch.where(ok, loss, 0.0) if loss is not None else ok.float() * 0)
            applied.append(ok.float())
        self.model.net.eval()  # outside updates the model serves and is evaluated
        for pair in fresh:
            self.replay.add(pair)  # the pixels store keeps the decoded tensor
        total, updates, pre_loss, pre_acc, scale = torch.stack(
            [sum(losses_), sum(applied), *pre, self.model.logit_scale().detach()]
        ).tolist()  # the step's one read-back
        updates = round(updates)
        self.steps += 1
        self.samples += len(fresh)
        skipped = self.cfg.steps_per_batch - updates
        self.skipped_nonfinite += skipped
        return StepResult(
            step=self.steps,
            samples=len(fresh),
            replayed=min(self.cfg.replay_per_step, len(self.replay)),
            loss=total / updates if updates else float("nan"),
            prequential_loss=pre_loss,
            prequential_accuracy=pre_acc,
            updates=updates,
            skipped_nonfinite=skipped,
            seconds=self._clock() - start,
            lr=self.optimizer.param_groups[0]["lr"],
            logit_scale=scale,
            model_seconds=self._model_seconds,
        )

    def _draw(self) -> list[Pair]:
        """An update's replayed pairs (decoded when stored as bytes), then its rehearsed ones."""
        drawn = self.replay.sample(self.cfg.replay_per_step)
        pairs = [e if isinstance(e, Pair) else self._to_pair(e) for e in drawn]
        return pairs + (
            self.rehearsal.draw(self.cfg.rehearse.per_update) if self.rehearsal is not None else []
        )

    def idle_step(self) -> None:
        """A rank without data this turn: join the turn's collectives, apply the same update."""
        for _ in range(self.cfg.steps_per_batch):
            self._update([])
        self.model.net.eval()
        self.steps += 1  # the global step count: the same on every rank

    def score(
        self, batch: Sequence[Pair], pixels: torch.Tensor | None = None
    ) -> tuple[float, float]:
        """Loss and top-1 accuracy on a batch the model has not learned from.

        Candidates: the label prompts held (the `max_labels` most recently seen) plus this
        batch's own texts, so a labelled image competes with the known classes and a caption
        with its batch mates.
        """
        loss, accuracy = self._score(batch, pixels).tolist()
        return loss, accuracy

    @torch.no_grad()
    def _score(self, batch: Sequence[Pair], pixels: torch.Tensor | None) -> torch.Tensor:
        """score(), left on the device: (loss, accuracy) [2]."""
        if self.model.net.training:  # eval() walks every module: only when it must
            self.model.net.eval()
        pixels = self._batches.stack(batch) if pixels is None else pixels
        prompts = self._prompts(batch)
        started = self._clock()
        with self.model.autocast():
            img = self.model.encode_images(pixels)
            known = self.labels
            candidates, target = losses.unique_targets([*known, *prompts])
            txt = self.model.encode_texts(candidates)
            target = upload(target[len(known) :], img.device)
            accuracy = (img @ txt.t()).argmax(dim=1).eq(target).float().mean()
            loss = self._loss(img, prompts, self.model.logit_scale())
        self._model_seconds += self._clock() - started
        return torch.stack([loss.float(), accuracy])

    def _update(self, batch: list[Pair], pixels: torch.Tensor | None = None):
        """One optimizer step; skipped (weights untouched) on a non-finite loss or gradient.
        Returns (loss, applied), both left on the device (loss None without rows).

        Alone, an update reads nothing back: fused AdamW skips a non-finite update on the
        device. Distributed, every rank's gradient joins the average (an empty batch with
        zero weight), and a non-finite loss on any rank makes every rank skip.
        """
        if not self.model.net.training:  # train() walks every module: only when it must
            self.model.net.train()
        if pixels is None and batch:
            pixels = self._batches.stack(batch)
        prompts = self._prompts(batch)
        started = self._clock()
        try:
            return self._apply(batch, pixels, prompts)
        finally:
            self._model_seconds += self._clock() - started

    def _apply(self, batch: list[Pair], pixels, prompts: list[str]):
        self.optimizer.zero_grad(set_to_none=True)
        gather = self._gathering()
        loss = None
        cast = torch.bfloat16 if self.bf16 else None
        with adapters_cast(self._adapters, cast):  # the factors in bf16: one cast each way
            if batch or gather:  # a rank without data still joins the feature gather
                with self.model.autocast():
                    img = self.model.encode_images(pixels) if batch else self._no_rows()
                    scale = self.model.logit_scale()
                    loss = self._loss(img, prompts, scale, gather=gather)
                    if self.regularizer is not None and batch:
                        loss = loss + self.regularizer.term(pixels, img, prompts, scale)
            if self.world.active:
                return self._apply_distributed(batch, loss, gather)
            if loss is not None:
                loss.backward()  # a non-finite loss leaves non-finite gradients: skipped below
        ok = torch.isfinite(self._clip()).to(self.model.device)  # no gradient: a CPU zero
        if loss is not None:
            ok = ok & torch.isfinite(loss.detach())
        self.optimizer.found_inf = (~ok).float()  # fused AdamW: skip on the device
        self.optimizer.step()
        self._after_update(ok)
        return (loss.detach() if loss is not None else None), ok

    def _apply_distributed(self, batch: list[Pair], loss: torch.Tensor | None, gather: bool):
        finite = loss is None or bool(torch.isfinite(loss))
        if loss is not None and batch and finite:
            loss.backward()
        weight = float(bool(batch)) if gather else float(len(batch))
        ok = self.world.reduce_gradients(self._params, weight, finite, mean=not gather)
        ok = ok and bool(torch.isfinite(self._clip()))
        flag = torch.tensor(ok, device=self.model.device)
        if ok:
            self.optimizer.found_inf = (~flag).float()
            self.optimizer.step()
            self._after_update(flag)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return (loss.detach() if loss is not None else None), flag

    def _clip(self) -> torch.Tensor:
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else float("inf")
        return torch.nn.utils.clip_grad_norm_(self._params, max_norm)

    def _after_update(self, ok: torch.Tensor) -> None:
        if self.teachers is not None:
            self.teachers.after_update(ok)

    def _gathering(self) -> bool:
        return self.gather_features and self.cfg.loss == "sit" and self.world.active

    def _no_rows(self) -> torch.Tensor:
        return torch.zeros(0, self.model.embed_dim, device=self.model.device)  # img [0, D]

    def _loss(
        self, img: torch.Tensor, prompts: list[str], scale: torch.Tensor, gather: bool = False
    ) -> torch.Tensor:
        """img [B, D] and the B prompts -> the configured loss; `gather`: over all ranks
        (a collective: every rank must call it, so never from the local prequential score)."""
        if self.cfg.loss == "clip":
            return losses.clip(img, self.model.encode_texts(prompts), scale)
        if self.cfg.loss == "asymmetric":
            known = self.labels
            texts, target = losses.unique_targets([*known, *prompts])
            target = upload(target[len(known) :], img.device)
            return losses.asymmetric(img, self.model.encode_texts(texts), target, scale)
        if gather:  # every rank's rows: negatives and shared positives span the global batch
            texts, target = losses.unique_targets(prompts)
            rows = self.model.encode_texts(texts)[upload(target, img.device)] if prompts else img
            return self.world.global_sit(img, rows, prompts, scale, self._both_directions)
        texts, target = losses.unique_targets(prompts)
        txt = self.model.encode_texts(texts)
        return losses.sit(img, txt, upload(target, img.device), scale, self._both_directions)

    @property
    def _both_directions(self) -> bool:
        return self.cfg.sit_directions == "both"

    def _prompts(self, batch: Sequence[Pair]) -> list[str]:
        return [p.sample.prompt(self.cfg.prompt_template) for p in batch]

    def _learn_labels(self, batch: Sequence[Pair]) -> None:
        for pair in batch:
            if pair.sample.label is not None:
                self.label_set.see(pair.sample.prompt(self.cfg.prompt_template))

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.model.trainable_state(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "labels": self.label_set.state_dict(),
            "steps": self.steps,
            "samples": self.samples,
            "skipped_nonfinite": self.skipped_nonfinite,
            "torch_rng": torch.get_rng_state(),
            **{n: None if (p := getattr(self, n)) is None else p.state_dict() for n in PARTS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_trainable_state(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint from before fused AdamW
            group.update(fused=True, foreach=None)
        self.label_set.load_state_dict(state["labels"])
        self.steps = int(state["steps"])
        self.samples = int(state["samples"])
        self.skipped_nonfinite = int(state["skipped_nonfinite"])
        torch.set_rng_state(state["torch_rng"])
        for name in PARTS:  # a checkpoint from before a part: that part's fresh state
            if (part := getattr(self, name)) is not None:
                part.load_state_dict(state.get(name))
