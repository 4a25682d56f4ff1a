"""Prometheus metrics on an injected registry.

Names follow Prometheus conventions: prefix `streamer_`, base units, `_total` counters,
bounded labels (windows are capped by evaluation.max_windows; reasons are a fixed set).
Families alike are declared as data. What the source, the ledger and the replay buffer
own is read at scrape time by a collector, never pushed (client_python's idiom).
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from streamer import __version__
from streamer.config import DRIFT_SIGNALS, Settings, config_hash
from streamer.evaluation.alignment import Diagnosis
from streamer.evaluation.evaluate import EvalReport
from streamer.intake.codec import REASONS
from streamer.records import StepResult

P = "streamer_"
STATES = ["starting", "restoring", "running", "paused", "draining", "failed"]
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
COUNTERS = {  # attribute: (name without prefix, help)
    "consumed": ("records_consumed_total", "Records taken from Kafka."),
    "trained": ("records_trained_total", "Records trained on."),
    "probes": ("records_probe_total", "Records held out as probes."),
    "dead_lettered": ("records_dead_lettered_total", "Records sent to the DLQ."),
    "commit_failures": ("kafka_commit_failures_total", "Offset commits refused."),
    "steps": ("train_steps_total", "Learner steps (fresh batches)."),
    "nonfinite": ("train_nonfinite_skips_total", "Updates skipped for NaN/Inf."),
    "ckpt_failures": ("checkpoint_failures_total", "Failed checkpoint writes."),
    "ckpt_unreadable": ("checkpoint_unreadable_total",
                        "Checkpoints skipped at restore: unreadable or unusable."),
}  # fmt: skip
GAUGES = {
    "loss": ("train_loss", "Mean training loss of the last step."),
    "online_accuracy": ("train_prequential_accuracy_ratio", "Accuracy on a batch before it."),
    "lr": ("train_learning_rate", "Current learning rate."),
    "logit_scale": ("train_logit_scale", "CLIP temperature exp(t)."),
    "ckpt_last": ("checkpoint_last_success_timestamp_seconds", "Last durable checkpoint."),
    "a_auc": ("quality_accuracy_auc_ratio", "Anytime accuracy (A_auc)."),
    "a_last": ("quality_accuracy_last_ratio", "Mean accuracy now."),
    "forgetting": ("quality_forgetting_average_ratio", "Mean forgetting over windows."),
    "bwt": ("quality_backward_transfer_ratio", "Backward transfer."),
    "misalignment_threshold": ("quality_misalignment_threshold",
                               "Alignment deficit that counts as misaligned (config)."),
    "deficit": ("quality_alignment_deficit_ratio",
                "Cross-modal top-1 below what the images alone separate (kNN), mean by class."),
    "deficit_lost": ("quality_alignment_deficit_lost_ratio",
                     "The part of the deficit a tower swapped back to the base recovers."),
    "separable": ("quality_image_separability_ratio",
                  "Leave-one-out kNN top-1 of probe images by class."),
    "separable_base": ("quality_image_separability_base_ratio",
                       "The same kNN top-1 on the base model's embeddings of the same probes."),
    "collapse": ("quality_image_collapse_ratio",
                 "Image separability lost against the base (base minus now, at least 0)."),
    "collapse_threshold": ("quality_image_collapse_threshold",
                           "Separability lost that counts as a collapsed image tower (config)."),
    "collapsed": ("quality_image_collapsed", "1 while the collapse is over its threshold."),
    "misaligned": ("quality_misaligned",
                   "1 while the deficit has stayed over the threshold for the window."),
    "retention": ("quality_retention_ratio", "Reference accuracy now minus at step 0."),
    "forward_transfer": ("quality_forward_transfer_ratio", "Mean of a[j-1][j] - a[0][j]."),
    "class_forgetting": ("quality_class_forgetting_average_ratio", "Mean per-class forgetting."),
    "windows_left_out": ("quality_windows_left_out",
                         "Tracked windows on too few probes to enter the means."),
    "reload_ok": ("config_last_reload_successful", "1 if the last config (re)load was accepted."),
    "reload_time": ("config_last_reload_success_timestamp_seconds",
                    "Time of the last accepted config."),
}  # fmt: skip
LABELLED = {  # attribute: (kind, name, help, labels)
    "invalid": (Counter, "records_invalid_total", "Refused records.", ["reason"]),
    "alarms": (Counter, "drift_alarms_total", "Drift detector alarms.", ["signal"]),
    "window_accuracy": (Gauge, "quality_window_accuracy_ratio", "Probe accuracy per window.",
                        ["window"]),
    "uniformity": (Gauge, "quality_uniformity", "Uniformity per modality.", ["modality"]),
    "recall": (Gauge, "quality_recall_at_1_ratio", "R@1 per direction.", ["direction"]),
    "drift": (Gauge, "quality_drift_ratio", "1 - cos to the base model, per modality.",
              ["modality"]),
    "swap": (Gauge, "quality_tower_swap_accuracy_ratio",
             "Probe top-1 with each tower now or swapped back to the base.", ["image", "text"]),
    "blame": (Gauge, "quality_misalignment_blame_ratio",
              "Deficit a swap of this tower back to the base recovers.", ["tower"]),
    "blamed": (Gauge, "quality_blamed_tower", "1 for the tower the diagnosis names.", ["tower"]),
    "class_deficit": (Gauge, "quality_class_alignment_deficit_ratio",
                      "Alignment deficit of the classes that lost most (top k).", ["class"]),
    "block_shift": (Gauge, "quality_block_delta_norm",
                    "How far each block moved (LoRA: |scale B A|).", ["tower", "block"]),
    "block_recovery": (Gauge, "quality_block_recovery_ratio",
                       "Probe top-1 with the block's adapters off, minus now.",
                       ["tower", "block"]),
}  # fmt: skip
TOP_CLASSES = 5  # per-class deficits exported (all of them are in the report)
TOWERS = ("image", "text", "both", "none")
ALIGNMENT = {
    "matched_cosine": ("quality_matched_cosine_ratio", "Mean cosine of matched probe pairs."),
    "modality_gap": ("quality_modality_gap", "Distance between image and text centroids."),
    "alignment": ("quality_alignment", "E|x-y|^2 over matched probe pairs (lower is better)."),
}


class Metrics:
    """The pushed families: events (counters, histograms) and figures of the last report."""

    consumed: Counter
    trained: Counter
    probes: Counter
    dead_lettered: Counter
    commit_failures: Counter
    steps: Counter
    nonfinite: Counter
    ckpt_failures: Counter
    ckpt_unreadable: Counter
    loss: Gauge
    online_accuracy: Gauge
    lr: Gauge
    logit_scale: Gauge
    ckpt_last: Gauge
    a_auc: Gauge
    a_last: Gauge
    forgetting: Gauge
    bwt: Gauge
    misalignment_threshold: Gauge
    reload_ok: Gauge
    reload_time: Gauge
    invalid: Counter
    alarms: Counter
    window_accuracy: Gauge
    uniformity: Gauge
    recall: Gauge
    drift: Gauge
    deficit: Gauge
    deficit_lost: Gauge
    separable: Gauge
    separable_base: Gauge
    collapse: Gauge
    collapse_threshold: Gauge
    collapsed: Gauge
    misaligned: Gauge
    retention: Gauge
    forward_transfer: Gauge
    class_forgetting: Gauge
    windows_left_out: Gauge
    swap: Gauge
    blame: Gauge
    blamed: Gauge
    class_deficit: Gauge
    block_shift: Gauge
    block_recovery: Gauge

    def __init__(self, registry: CollectorRegistry, process: bool = True) -> None:
        r = self.registry = registry
        for attr, (name, text) in COUNTERS.items():
            setattr(self, attr, Counter(P + name, text, registry=r))
        for attr, (name, text) in GAUGES.items():
            setattr(self, attr, Gauge(P + name, text, registry=r))
        for attr, (kind, name, text, labels) in LABELLED.items():
            setattr(self, attr, kind(P + name, text, labels, registry=r))
        self.alignment = {k: Gauge(P + n, t, registry=r) for k, (n, t) in ALIGNMENT.items()}
        self.build = Info(f"{P}build", "Version, model and training setup.", registry=r)
        self.config = Info(f"{P}config", "Hash of the config in force.", registry=r)
        self.state = Enum(f"{P}state", "Daemon state.", states=STATES, registry=r)
        self.latency = Histogram(
            f"{P}record_latency_seconds",
            "From a record's Kafka timestamp to the end of the step that took it in.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(f"{P}train_step_duration_seconds",
                                      "Wall time of one learner step.", buckets=STEP_BUCKETS,
                                      registry=r)  # fmt: skip
        self.ckpt_seconds = Histogram(f"{P}checkpoint_duration_seconds",
                                      "Time to write a checkpoint and commit.",
                                      buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        self.ckpt_snapshot_seconds = Histogram(
            f"{P}checkpoint_snapshot_seconds", "Training-thread time to copy the state for a "
            "background checkpoint.", buckets=STEP_BUCKETS, registry=r)  # fmt: skip
        for reason in REASONS:  # known label values start at 0, so rates and alerts see them
            self.invalid.labels(reason)
        for signal in DRIFT_SIGNALS:
            self.alarms.labels(signal)
        for tower in TOWERS:
            self.blamed.labels(tower)
        if process:  # memory, file descriptors, CPU, GC: leaks show on the daemon's own page
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._shown: dict[str, set[tuple[str, ...]]] = {}  # label sets of bounded families

    def observe_latencies(self, seconds: list[float]) -> None:
        for value in seconds:
            self.latency.observe(value)

    def observe_step(self, result: StepResult) -> None:
        self.steps.inc()
        self.step_seconds.observe(result.seconds)
        if result.updates:
            self.loss.set(result.loss)
        self.online_accuracy.set(result.prequential_accuracy)
        self.lr.set(result.lr)
        self.logit_scale.set(result.logit_scale)
        self.nonfinite.inc(result.skipped_nonfinite)

    def observe_report(self, report: EvalReport) -> None:
        self._show(self.window_accuracy, "windows", {(w,): a for w, a in report.accuracy.items()})
        for gauge, value in ((self.a_auc, report.a_auc), (self.a_last, report.a_last),
                             (self.forgetting, report.average_forgetting), (self.bwt, report.bwt),
                             (self.forward_transfer, report.average_forward_transfer),
                             (self.class_forgetting, report.average_class_forgetting),
                             (self.windows_left_out, len(report.left_out)),
                             (self.misaligned, report.misaligned)):  # fmt: skip
            gauge.set(value)
        if "reference" in report.retention:
            self.retention.set(report.retention["reference"])
        a = report.alignment
        if a:
            for key, gauge in self.alignment.items():
                gauge.set(a[key])
            for direction in ("image_to_text", "text_to_image"):
                self.recall.labels(direction).set(a[f"recall_at_1_{direction}"])
            for modality in ("image", "text"):
                self.uniformity.labels(modality).set(a[f"uniformity_{modality}"])
                self.drift.labels(modality).set(a[f"{modality}_drift"])
        if report.diagnosis is not None:
            self._observe_diagnosis(report.diagnosis)
        if report.blocks:
            self._show(
                self.block_shift,
                "blocks",
                {(b.tower, str(b.block)): b.delta_norm for b in report.blocks},
            )
            self._show(self.block_recovery, "recovery", {(b.tower, str(b.block)): b.recovery
                       for b in report.blocks if b.recovery is not None})  # fmt: skip
        for signal in report.alarms:
            self.alarms.labels(signal).inc()

    def _observe_diagnosis(self, d: Diagnosis) -> None:
        self.deficit.set(d.deficit)
        self.deficit_lost.set(d.lost)
        self.separable.set(d.separable)
        self.separable_base.set(d.separable_base)
        self.collapse.set(d.collapse)
        self.collapsed.set(d.collapsed)
        for (image, text), retrieval in (
            (("now", "now"), d.swap.now), (("now", "base"), d.swap.text_base),
            (("base", "now"), d.swap.image_base), (("base", "base"), d.swap.base),
        ):  # fmt: skip
            self.swap.labels(image, text).set(retrieval.accuracy)
        for tower, value in (("image", d.image_blame), ("text", d.text_blame),
                             ("both", d.both_blame)):  # fmt: skip
            self.blame.labels(tower).set(value)
        for tower in TOWERS:
            self.blamed.labels(tower).set(1 if d.blame == tower else 0)
        worst = {(c.text,): c.deficit for c in d.top(TOP_CLASSES)}
        self._show(self.class_deficit, "classes", worst)

    def _show(self, gauge: Gauge, key: str, values: dict[tuple[str, ...], float]) -> None:
        """Set a bounded family to exactly these label sets: ones no longer shown leave."""
        for gone in self._shown.get(key, set()) - values.keys():
            gauge.remove(*gone)
        self._shown[key] = set(values)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)

    def describe(self, settings: Settings) -> None:
        """Build and config info; called at start and on every accepted reload."""
        model, learner = settings.model, settings.learner
        self.build.info({
            "version": __version__, "model": model.arch, "pretrained": str(model.pretrained),
            "loss": learner.loss, "peft": model.peft.mode, "towers": model.peft.towers,
        })  # fmt: skip
        self.misalignment_threshold.set(settings.evaluation.misalignment_threshold)
        self.collapse_threshold.set(settings.evaluation.collapse_threshold)
        self.reload_ok.set(1)
        self.reload_time.set(time.time())
        self.config.info({"hash": config_hash(settings)})
        self.lr.set(learner.lr)
