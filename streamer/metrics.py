"""Prometheus metrics on an injected registry.

Names follow Prometheus conventions: prefix `streamer_`, base units, `_total` counters,
bounded labels (windows are capped by evaluation.max_windows; reasons are a fixed set).
Families alike are declared as data. What the source, the ledger and the replay buffer
own is read at scrape time by a collector, never pushed (client_python's idiom).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from streamer import __version__
from streamer.codec import REASONS
from streamer.config import DRIFT_SIGNALS, Settings, config_hash
from streamer.evaluate import EvalReport
from streamer.records import Partition, StepResult
from streamer.source import SourceStats

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
                               "Misalignment score that alerts (config)."),
    "reload_ok": ("config_last_reload_successful", "1 if the last config (re)load was accepted."),
    "reload_time": ("config_last_reload_success_timestamp_seconds",
                    "Time of the last accepted config."),
}  # fmt: skip
LABELLED = {  # attribute: (kind, name, help, label)
    "invalid": (Counter, "records_invalid_total", "Refused records.", "reason"),
    "alarms": (Counter, "drift_alarms_total", "Drift detector alarms.", "signal"),
    "window_accuracy": (Gauge, "quality_window_accuracy_ratio", "Probe accuracy per window.",
                        "window"),
    "uniformity": (Gauge, "quality_uniformity", "Uniformity per modality.", "modality"),
    "recall": (Gauge, "quality_recall_at_1_ratio", "R@1 per direction.", "direction"),
    "drift": (Gauge, "quality_drift_ratio", "1 - cos to the base model, per modality.",
              "modality"),
}  # fmt: skip
ALIGNMENT = {
    "matched_cosine": ("quality_matched_cosine_ratio", "Mean cosine of matched probe pairs."),
    "modality_gap": ("quality_modality_gap", "Distance between image and text centroids."),
    "alignment": ("quality_alignment", "E|x-y|^2 over matched probe pairs (lower is better)."),
    "structure_kl": ("quality_structure_kl", "KL of image-text similarities from the base model."),
    "misalignment": ("quality_misalignment",
                     "One-sided-drift-weighted structure KL, held over the window."),
    "misalignment_instant": ("quality_misalignment_instant",
                             "Misalignment score of the last evaluation alone."),
}  # fmt: skip


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

    def __init__(self, registry: CollectorRegistry, process: bool = True) -> None:
        r = self.registry = registry
        for attr, (name, text) in COUNTERS.items():
            setattr(self, attr, Counter(P + name, text, registry=r))
        for attr, (name, text) in GAUGES.items():
            setattr(self, attr, Gauge(P + name, text, registry=r))
        for attr, (kind, name, text, label) in LABELLED.items():
            setattr(self, attr, kind(P + name, text, [label], registry=r))
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
        for reason in REASONS:  # known label values start at 0, so rates and alerts see them
            self.invalid.labels(reason)
        for signal in DRIFT_SIGNALS:
            self.alarms.labels(signal)
        if process:  # memory, file descriptors, CPU, GC: leaks show on the daemon's own page
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._windows: set[str] = set()

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
        for window in self._windows - report.accuracy.keys():  # dropped: keep labels bounded
            self.window_accuracy.remove(window)
        self._windows = set(report.accuracy)
        for window, accuracy in report.accuracy.items():
            self.window_accuracy.labels(window).set(accuracy)
        self.a_auc.set(report.a_auc)
        self.a_last.set(report.a_last)
        self.forgetting.set(report.average_forgetting)
        self.bwt.set(report.bwt)
        a = report.alignment
        if a:
            for key, gauge in self.alignment.items():
                gauge.set(a[key])
            for direction in ("image_to_text", "text_to_image"):
                self.recall.labels(direction).set(a[f"recall_at_1_{direction}"])
            for modality in ("image", "text"):
                self.uniformity.labels(modality).set(a[f"uniformity_{modality}"])
                self.drift.labels(modality).set(a[f"{modality}_drift"])
        for signal in report.alarms:
            self.alarms.labels(signal).inc()

    def describe(self, settings: Settings) -> None:
        """Build and config info; called at start and on every accepted reload."""
        model, learner = settings.model, settings.learner
        self.build.info({
            "version": __version__, "model": model.arch, "pretrained": str(model.pretrained),
            "loss": learner.loss, "peft": model.peft.mode, "towers": model.peft.towers,
        })  # fmt: skip
        self.misalignment_threshold.set(settings.evaluation.misalignment_threshold)
        self.reload_ok.set(1)
        self.reload_time.set(time.time())
        self.config.info({"hash": config_hash(settings)})
        self.lr.set(learner.lr)


@dataclass(frozen=True)
class PipelineView:
    """What the collector reads at scrape time; built from objects the daemon owns."""

    source: SourceStats
    offsets: dict[Partition, int] = field(default_factory=dict)  # next offset to account for
    replay_items: int = 0
    replay_bytes: int = 0
    replay_capacity: int = 0
    labels: int = 0
    labels_capacity: int = 0


class PipelineCollector:
    """Source, ledger, replay and label-set figures, read when Prometheus scrapes."""

    def __init__(self, read: Callable[[], PipelineView | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        view = self._read()
        if view is None:
            return
        s = view.source
        lag = GaugeMetricFamily(f"{P}kafka_partition_lag_records",
                                "Log end minus the next offset to account for.",
                                labels=["topic", "partition"])  # fmt: skip
        for (topic, partition), end in sorted(s.highwater.items()):
            if (topic, partition) in s.assigned:
                behind = max(0, end - view.offsets.get((topic, partition), 0))
                lag.add_metric([topic, str(partition)], behind)
        yield lag
        yield _gauge("kafka_assigned_partitions", "Partitions owned.", len(s.assigned))
        yield _gauge("kafka_buffered_records", "Records fetched, not yet trained.", s.buffered)
        yield _gauge("kafka_paused", "1 while fetching is paused (backpressure).", s.paused)
        if s.last_poll is not None:
            yield _gauge("kafka_last_poll_timestamp_seconds", "Time of the last poll.",
                         s.last_poll)  # fmt: skip
        yield CounterMetricFamily(f"{P}kafka_rebalances", "Assignments received.",
                                  value=s.rebalances)  # fmt: skip
        yield _gauge("replay_items", "Samples held in the buffer.", view.replay_items)
        yield _gauge("replay_capacity", "Buffer capacity.", view.replay_capacity)
        yield _gauge("replay_bytes", "Encoded bytes held.", view.replay_bytes)
        yield _gauge("learner_labels", "Label prompts held as scoring candidates.", view.labels)
        yield _gauge("learner_labels_capacity", "Bound on label prompts held (config).",
                     view.labels_capacity)  # fmt: skip
        gpu = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        yield _gauge("gpu_memory_allocated_bytes", "CUDA memory (0 without a GPU).", gpu)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, text, value=float(value))


class _RankLabelled:
    """Every sample of a registry with a `rank` label added (bounded by the world size)."""

    def __init__(self, registry: CollectorRegistry, rank: int) -> None:
        self.registry, self.rank = registry, str(rank)

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, "rank": self.rank}, s.value, s.timestamp,
                               s.exemplar)  # fmt: skip
            yield out


def with_rank(registry: CollectorRegistry, rank: int) -> CollectorRegistry:
    """A registry serving `registry`'s metrics, each labelled with this process's rank."""
    labelled = CollectorRegistry(auto_describe=False)
    labelled.register(_RankLabelled(registry, rank))
    return labelled
