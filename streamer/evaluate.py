"""Evaluation inside the daemon: probe sets per window, forgetting, alignment, drift alarms.

A deterministic slice of the stream (by hash of record id) is held out as probes instead of
trained on. Probes are kept per window (a record's task, else a time bucket of its event
time) in bounded reservoirs; only the last `max_windows` windows are tracked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from streamer import alignment
from streamer.config import EvaluationConfig
from streamer.drift import DriftMonitor
from streamer.forgetting import AccuracyMatrix
from streamer.model import ClipModel
from streamer.records import Sample, StepResult, id_hash
from streamer.replay import ReplayBuffer


@dataclass(frozen=True)
class EvalReport:
    samples: int  # trained samples at evaluation time
    accuracy: dict[str, float]  # per tracked window
    a_last: float
    a_auc: float
    forgetting: dict[str, float]
    average_forgetting: float
    bwt: float
    alignment: dict[str, float] = field(default_factory=dict)  # over all probes
    alarms: tuple[str, ...] = ()


CLOSED_MEMORY = 100
PROBE_SIGNALS = ("matched_cosine", "modality_gap", "misalignment")  # detectors fed per evaluation
REFERENCE = "reference"


def probe_bucket(sample_id: str) -> float:
    """A stable number in [0, 1) from the record id: the same on every run and replica."""
    return id_hash(sample_id) / 2**64


class Evaluator:
    def __init__(
        self,
        cfg: EvaluationConfig,
        model: ClipModel,
        to_pixels: Callable[[Sample], torch.Tensor],
        prompt_template: str,
        reference: Sequence[Sample] = (),
    ) -> None:
        self.cfg = cfg
        self.model = model
        self._to_pixels = to_pixels
        self._template = prompt_template
        self.matrix = AccuracyMatrix(cfg.max_windows)
        self.monitor = DriftMonitor(cfg.detectors, cfg.history)
        self.probes: dict[str, ReplayBuffer] = {}
        self.current: str | None = None  # the window being trained now
        self._closed: list[str] = []  # recently closed windows, to ignore late records
        self.samples = 0  # trained samples seen
        self._next_eval = cfg.eval_every
        self._base: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> base embeddings
        self._instant: list[float] = []  # recent instant misalignment scores, newest last
        if reference:  # what the base model knew and must keep: a window never dropped
            self.matrix.track(REFERENCE, pinned=True)
            self.probes[REFERENCE] = ReplayBuffer(len(reference))
            for sample in reference:
                self.probes[REFERENCE].add(sample)

    def reconfigure(self, cfg: EvaluationConfig) -> None:
        """Live tuning: evaluation cadence and detector thresholds."""
        if cfg.eval_every != self.cfg.eval_every:
            self._next_eval = (self.samples // cfg.eval_every + 1) * cfg.eval_every
        self.cfg = cfg
        self.monitor.retune(cfg.detectors)

    def window_of(self, sample: Sample) -> str:
        if sample.task is not None:
            return sample.task
        return f"t{int(sample.ts // self.cfg.window_seconds)}"

    def is_probe(self, sample: Sample) -> bool:
        return probe_bucket(sample.id) < self.cfg.probe_fraction

    def add_probe(self, sample: Sample) -> None:
        window = self.window_of(sample)
        self._track(window)
        if window in self.probes:
            self.probes[window].add(sample)

    def before_step(self, batch: Sequence[Sample], labels: Sequence[str]) -> EvalReport | None:
        """Close the current window's row when the stream moves on to a window not yet trained.

        A late record of a closed window changes nothing: rows only move forward.
        """
        report = None
        for window in dict.fromkeys(self.window_of(s) for s in batch):
            if window == self.current or window in self._closed:
                continue
            self._track(window)
            if self.current is not None:
                report = self.evaluate(labels)
                self.matrix.close(self.current)
                self._closed = [*self._closed, self.current][-CLOSED_MEMORY:]
            self.current = window
        return report

    def after_step(self, result: StepResult, labels: Sequence[str]) -> EvalReport | None:
        """Feed the accuracy detector; evaluate every `eval_every` trained samples."""
        self.samples += result.samples
        self.monitor.update({"accuracy": result.prequential_accuracy})
        if self.samples < self._next_eval:
            return None
        self._next_eval = (self.samples // self.cfg.eval_every + 1) * self.cfg.eval_every
        return self.evaluate(labels)

    def _track(self, window: str) -> None:
        if window in self.matrix.windows:
            return
        for dropped in self.matrix.track(window):
            self.probes.pop(dropped, None)
        seed = int(probe_bucket(window) * 2**31)
        self.probes[window] = ReplayBuffer(self.cfg.probe_per_window, seed=seed)

    @torch.no_grad()
    def evaluate(self, labels: Sequence[str]) -> EvalReport:
        """Accuracy per window, alignment against the base model, drift detectors."""
        probes = {w: buf.items() for w, buf in self.probes.items() if len(buf)}
        everything = [s for samples in probes.values() for s in samples]
        report_alignment: dict[str, float] = {}
        accuracy: dict[str, float] = {}
        if everything:
            img, txt, img0, txt0, base_scale = self._embed(everything)
            texts = [s.prompt(self._template) for s in everything]
            accuracy = self._accuracy(probes, img, texts, labels)
            report_alignment = alignment.summarise(img, txt, img0, txt0, texts, base_scale)
            report_alignment |= self.sustained_misalignment(report_alignment["misalignment"])
        self.matrix.record(accuracy, self.samples)
        alarms = self.monitor.update(
            {k: v for k, v in report_alignment.items() if k in PROBE_SIGNALS}
        )
        return EvalReport(
            samples=self.samples,
            accuracy=dict(self.matrix.latest),
            a_last=self.matrix.a_last(),
            a_auc=self.matrix.a_auc(),
            forgetting=self.matrix.forgetting(),
            average_forgetting=self.matrix.average_forgetting(),
            bwt=self.matrix.bwt(),
            alignment=report_alignment,
            alarms=tuple(alarms),
        )

    def sustained_misalignment(self, instant: float) -> dict[str, float]:
        """The score held over the last `misalignment_window` evaluations (their minimum);
        0 until there are that many: a one-sided drift must persist to count."""
        window = self.cfg.misalignment_window
        self._instant = [*self._instant, instant][-window:]
        held = min(self._instant) if len(self._instant) == window else 0.0
        return {"misalignment_instant": instant, "misalignment": held}

    def _accuracy(self, probes, img, texts, labels) -> dict[str, float]:
        """Top-1 among every known label prompt and probe text (captions of unlabelled probes)."""
        candidates = list(dict.fromkeys([*labels, *texts]))
        cand_emb = self._encode_texts(candidates)
        predicted = (img @ cand_emb.t()).argmax(dim=1).tolist()
        hits = [candidates[p] == t for p, t in zip(predicted, texts, strict=True)]
        out, start = {}, 0
        for window, samples in probes.items():
            out[window] = sum(hits[start : start + len(samples)]) / len(samples)
            start += len(samples)
        return out

    def _embed(self, samples: list[Sample]):
        """Current and base embeddings of probe images and texts, in batches."""
        img, txt = self._encode(samples, None)
        missing = [s for s in samples if s.id not in self._base]
        with self.model.base() as base:
            base_scale = float(base.logit_scale.exp().clamp(max=100.0))
            if missing:
                img0, txt0 = self._encode(missing, base)
                self._base.update({s.id: (img0[i], txt0[i]) for i, s in enumerate(missing)})
        self._base = {s.id: self._base[s.id] for s in samples}  # forget evicted probes
        img0 = torch.stack([self._base[s.id][0] for s in samples])
        txt0 = torch.stack([self._base[s.id][1] for s in samples])
        return img, txt, img0, txt0, base_scale

    def _encode(self, samples: list[Sample], net) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.net.eval()
        imgs, txts = [], []
        for i in range(0, len(samples), self.cfg.eval_batch_size):
            chunk = samples[i : i + self.cfg.eval_batch_size]
            pixels = torch.stack([self._to_pixels(s) for s in chunk])
            imgs.append(self.model.encode_images(pixels, net).cpu())
            texts = [s.prompt(self._template) for s in chunk]
            txts.append(self.model.encode_texts(texts, net).cpu())
        return torch.cat(imgs), torch.cat(txts)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        step = self.cfg.eval_batch_size
        return torch.cat(
            [self.model.encode_texts(texts[i : i + step]).cpu() for i in range(0, len(texts), step)]
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix.state_dict(),
            "monitor": self.monitor.state_dict(),
            "probes": {w: buf.state_dict() for w, buf in self.probes.items()},
            "current": self.current,
            "closed": list(self._closed),
            "samples": self.samples,
            "next_eval": self._next_eval,
            "misalignment_instant": list(self._instant),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.matrix.load_state_dict(state["matrix"])
        self.monitor.load_state_dict(state["monitor"])
        self.probes = {}
        for window, buf_state in state["probes"].items():
            self.probes[window] = ReplayBuffer(buf_state["capacity"])
            self.probes[window].load_state_dict(buf_state)
        self.current = state["current"]
        self._closed = list(state["closed"])
        self.samples = int(state["samples"])
        self._next_eval = int(state["next_eval"])
        self._instant = [float(v) for v in state.get("misalignment_instant", [])]
        self._base = {}
