"""Evaluation inside the daemon: probe sets per window, forgetting, alignment, drift alarms.

A deterministic slice of the stream (by hash of record id) is held out as probes instead of
trained on. Probes are kept per window (a record's task, else a time bucket of its event
time) in bounded reservoirs; only the last `max_windows` windows are tracked.

The protocol (Chaudhry et al.; Si-Blurry): the base model is evaluated once at step 0 (row
a[0]); a window's row closes when the stream moves on to a window not yet trained, measured
before any training on the new one (its cells there are forward cells); A_auc averages the
periodic evaluations (every `eval_every` samples) only; cells measured on fewer than
`min_probes` probes enter no mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from streamer.config import EvaluationConfig
from streamer.evaluation import alignment
from streamer.evaluation.alignment import BlockShift, Diagnosis
from streamer.evaluation.attribution import attribute
from streamer.evaluation.drift import DriftMonitor
from streamer.evaluation.forgetting import AccuracyMatrix, ClassForgetting
from streamer.evaluation.probes import Embedded, ProbeEmbeddings, hits_by_group
from streamer.learning.model import ClipModel
from streamer.learning.replay import ReplayBuffer
from streamer.records import Sample, StepResult, id_hash, window_of

EvalKind = Literal["base", "periodic", "boundary", "final"]


@dataclass(frozen=True)
class EvalReport:
    samples: int  # trained samples at evaluation time
    kind: EvalKind  # base: step 0; periodic: every eval_every; boundary: a row closes
    accuracy: dict[str, float]  # per window measured on at least min_probes probes
    probes: dict[str, int]  # probes held per tracked window, measured or not
    left_out: tuple[str, ...]  # windows on fewer than min_probes probes: in no mean
    a_last: float
    a_auc: float
    forgetting: dict[str, float]
    average_forgetting: float
    bwt: float
    forward_transfer: dict[str, float] = field(default_factory=dict)  # a[j-1][j] - a[0][j]
    average_forward_transfer: float = float("nan")
    retention: dict[str, float] = field(default_factory=dict)  # pinned: now - step 0
    class_forgetting: dict[str, float] = field(default_factory=dict)  # by label
    average_class_forgetting: float = float("nan")
    alignment: dict[str, float] = field(default_factory=dict)  # descriptive, over all probes
    diagnosis: Diagnosis | None = None  # over all probes
    misaligned: bool = False  # deficit over threshold at `misalignment_window` evaluations
    alarms: tuple[str, ...] = ()
    blocks: tuple[BlockShift, ...] = ()  # per-block attribution, when it ran this time


CLOSED_MEMORY = 100
REFERENCE = "reference"
STATE_FORMAT = 2


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
        self.matrix = AccuracyMatrix(cfg.max_windows, cfg.min_probes)
        self.classes = ClassForgetting(cfg.max_classes, cfg.min_class_probes)
        self.monitor = DriftMonitor(cfg.detectors, cfg.history)
        self.embeddings = ProbeEmbeddings(model, to_pixels, prompt_template, cfg.eval_batch_size)
        self.probes: dict[str, ReplayBuffer] = {}
        self.current: str | None = None  # the window being trained now
        self._closed: list[str] = []  # recently closed windows, to ignore late records
        self.samples = 0  # trained samples seen
        self._next_eval = cfg.eval_every
        self._base_done = False  # the step-0 evaluation ran (kept in the state)
        self._deficits: list[float] = []  # recent alignment deficits, newest last
        self._evaluations = 0  # with probes: paces the per-block attribution
        self.diagnosis: Diagnosis | None = None  # the latest (not kept in the state)
        if reference:  # what the base model knew and must keep: a window never dropped
            self.matrix.track(REFERENCE, pinned=True)
            self.probes[REFERENCE] = ReplayBuffer(len(reference))
            for sample in reference:
                self.probes[REFERENCE].add(sample)

    def reconfigure(self, cfg: EvaluationConfig) -> None:
        """Live tuning: evaluation cadence, probe minimums and detector thresholds."""
        if cfg.eval_every != self.cfg.eval_every:
            self._next_eval = (self.samples // cfg.eval_every + 1) * cfg.eval_every
        self.cfg = cfg
        self.matrix.min_probes = cfg.min_probes
        self.classes.min_probes = cfg.min_class_probes
        self.monitor.retune(cfg.detectors)

    def window_of(self, sample: Sample) -> str:
        return window_of(sample, self.cfg.window_seconds)

    def is_probe(self, sample: Sample) -> bool:
        return probe_bucket(sample.id) < self.cfg.probe_fraction

    def add_probe(self, sample: Sample) -> None:
        """Hold a probe in its window; a record seen again (a replay of the topic, a second
        epoch) is held once, or images would find their own copy as nearest neighbour."""
        window = self.window_of(sample)
        self._track(window)
        held = self.probes.get(window)
        if held is not None and all(s.id != sample.id for s in held.items()):
            held.add(sample)

    def before_step(self, batch: Sequence[Sample], labels: Sequence[str]) -> EvalReport | None:
        """The first step evaluates the base (row a[0]); a batch of a window not yet trained
        closes the current window's row, measured before any training on the new one.

        A late record of a closed window changes nothing: rows only move forward.
        """
        report = self.evaluate_base(labels)
        seen = {self.current, *self._closed}
        new = [w for w in dict.fromkeys(self.window_of(s) for s in batch) if w not in seen]
        if not new:
            return report
        for window in new:
            self._track(window)
        if self.current is not None:
            report = self._evaluate(labels, "boundary")  # the new windows' cells: forward
            self.matrix.close(self.current)
            self.classes.close()
            self._closed = [*self._closed, self.current][-CLOSED_MEMORY:]
        for window in new:
            self.matrix.start(window)
        self._closed = [*self._closed, *new[:-1]][-CLOSED_MEMORY:]  # begun and over at once
        self.current = new[-1]
        return report

    def evaluate_base(self, labels: Sequence[str]) -> EvalReport | None:
        """The step-0 evaluation, once (a restored evaluator remembers it ran): every probe
        held now, on the base model; its per-class accuracies are the first candidates of
        per-class forgetting. None when it already ran."""
        if self._base_done:
            return None
        self._base_done = True
        report = self._evaluate(labels, "base")
        if self.samples == 0:
            self.classes.close()
        return report

    def after_step(self, result: StepResult, labels: Sequence[str]) -> EvalReport | None:
        """Feed the accuracy detector; evaluate every `eval_every` trained samples."""
        self.samples += result.samples
        self.monitor.update({"accuracy": result.prequential_accuracy})
        if self.samples < self._next_eval:
            return None
        self._next_eval = (self.samples // self.cfg.eval_every + 1) * self.cfg.eval_every
        return self._evaluate(labels, "periodic")

    def _track(self, window: str) -> None:
        if window in self.matrix.windows:
            return
        for dropped in self.matrix.track(window):
            self.probes.pop(dropped, None)
        seed = int(probe_bucket(window) * 2**31)
        self.probes[window] = ReplayBuffer(self.cfg.probe_per_window, seed=seed)

    def evaluate(self, labels: Sequence[str]) -> EvalReport:
        """An evaluation out of the schedule (the end of a run, an explicit request): it
        closes no row and does not enter A_auc."""
        return self._evaluate(labels, "final")

    @torch.no_grad()
    def _evaluate(self, labels: Sequence[str], kind: EvalKind) -> EvalReport:
        """Accuracy per window and class, alignment and its diagnosis, drift detectors."""
        probes = {w: buf.items() for w, buf in self.probes.items() if len(buf)}
        everything = [s for samples in probes.values() for s in samples]
        figures, diagnosis, windows, classes, blocks = {}, None, {}, {}, ()  # nothing measured
        if everything:
            emb = self.embeddings.embed(everything)
            candidates = list(dict.fromkeys([*labels, *emb.texts]))
            hits = self.embeddings.hits(emb, candidates, base=False)
            windows = hits_by_group(hits, [w for w, ss in probes.items() for _ in ss])
            classes = hits_by_group(hits, [s.label for s in everything])
            self._record_base(kind, probes, emb, candidates)
            figures = alignment.summarise(emb.img, emb.txt, emb.img0, emb.txt0, emb.texts)
            diagnosis = self._diagnose(emb)
            blocks = self._attribute(everything, emb)
        self.matrix.record(windows, self.samples, periodic=kind == "periodic")
        self.classes.record(classes)
        signals = {k: figures[k] for k in ("matched_cosine", "modality_gap") if k in figures}
        if diagnosis is not None:
            signals["misalignment"] = diagnosis.deficit  # the detector's name, kept for config
        alarms = self.monitor.update(signals)
        return replace(self._report(kind, probes, figures, diagnosis, tuple(alarms)),
                       blocks=blocks)  # fmt: skip

    def _attribute(self, samples: list[Sample], emb: Embedded) -> tuple[BlockShift, ...]:
        """Every `attribution_every` evaluations with probes: which blocks moved."""
        self._evaluations += 1
        every = self.cfg.attribution_every
        if not every or (self._evaluations - 1) % every:
            return ()
        return attribute(self.model, self.embeddings, samples, emb)

    def _record_base(self, kind: EvalKind, probes, emb: Embedded, candidates) -> None:
        """Base-model cells for the step-0 row, or for windows that had too few probes then."""
        need = [w for w in probes if kind == "base" or self.matrix.needs_base(w)]
        need = [w for w in need if kind == "base" or len(probes[w]) >= self.matrix.min_probes]
        if not need:
            return
        owners = [w for w, ss in probes.items() for _ in ss]
        cells = hits_by_group(self.embeddings.hits(emb, candidates, base=True), owners)
        self.matrix.record_base({w: cells[w] for w in need})

    def _diagnose(self, emb: Embedded) -> Diagnosis:
        cfg = self.cfg
        margin, k = cfg.blame_margin, cfg.knn_k
        diagnosis = alignment.diagnose(emb.img, emb.txt, emb.img0, emb.txt0, emb.texts,
                                       cfg.misalignment_threshold, margin, k,
                                       cfg.collapse_threshold)  # fmt: skip
        self.hold(diagnosis.deficit)
        self.diagnosis = diagnosis
        return diagnosis

    def hold(self, deficit: float) -> bool:
        """Keep one evaluation's deficit; whether the towers count as misaligned now."""
        self._deficits = [*self._deficits, deficit][-self.cfg.misalignment_window :]
        return self.misaligned()

    def misaligned(self) -> bool:
        """The deficit stayed over the threshold for the last `misalignment_window`
        evaluations: a transient (a new domain being learned) does not count."""
        window = self.cfg.misalignment_window
        held = self._deficits[-window:]
        return len(held) == window and min(held) > self.cfg.misalignment_threshold

    def _report(self, kind, probes, figures, diagnosis, alarms) -> EvalReport:
        m, c = self.matrix, self.classes
        return EvalReport(
            samples=self.samples, kind=kind,
            accuracy={w: cell.accuracy for w, cell in m.latest.items() if m.measured(cell)},
            probes={w: len(ss) for w, ss in probes.items() if w in m.windows},
            left_out=tuple(m.left_out()), a_last=m.a_last(), a_auc=m.a_auc(),
            forgetting=m.forgetting(), average_forgetting=m.average_forgetting(), bwt=m.bwt(),
            forward_transfer=m.forward_transfer(),
            average_forward_transfer=m.average_forward_transfer(),
            retention=m.retention(), class_forgetting=c.forgetting(),
            average_class_forgetting=c.average(), alignment=figures, diagnosis=diagnosis,
            misaligned=self.misaligned(), alarms=alarms,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "matrix": self.matrix.state_dict(),
            "classes": self.classes.state_dict(),
            "monitor": self.monitor.state_dict(),
            "probes": {w: buf.state_dict() for w, buf in self.probes.items()},
            "current": self.current,
            "closed": list(self._closed),
            "samples": self.samples,
            "next_eval": self._next_eval,
            "base_done": self._base_done,
            "deficits": list(self._deficits),
            "evaluations": self._evaluations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self.probes = {}
        for window, buf_state in state["probes"].items():
            self.probes[window] = ReplayBuffer(buf_state["capacity"])
            self.probes[window].load_state_dict(buf_state)
        self.current = state["current"]
        self._closed = list(state["closed"])
        self.samples = int(state["samples"])
        self._next_eval = int(state["next_eval"])
        self.embeddings.forget()
        if state.get("format") != STATE_FORMAT:  # an older protocol: its figures do not carry
            self._base_done = self.samples > 0 or bool(state["matrix"]["latest"])
            for window in state["matrix"]["windows"]:
                self.matrix.track(window, pinned=window in state["matrix"]["pinned"])
            trained = [*self._closed, self.current]
            self.matrix.started = [w for w in trained if w in self.matrix.windows]
            return
        self.matrix.load_state_dict(state["matrix"])
        self.classes.load_state_dict(state["classes"])
        self._base_done = bool(state["base_done"])
        self._deficits = [float(v) for v in state["deficits"]]
        self._evaluations = int(state.get("evaluations", 0))
