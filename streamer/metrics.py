"""Prometheus metrics on an injected registry, and the /metrics, /healthz, /readyz server.

Names follow Prometheus conventions: prefix `streamer_`, base units, `_total` counters,
bounded labels (windows are capped by evaluation.max_windows; reasons are a fixed set).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric

from streamer import __version__
from streamer.codec import REASONS
from streamer.config import DRIFT_SIGNALS, Settings, config_hash
from streamer.evaluate import EvalReport
from streamer.records import StepResult
from streamer.replay import ReplayBuffer
from streamer.source import KafkaSource

STATES = ["starting", "restoring", "running", "paused", "draining", "failed"]
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
ALIGNMENT = {
    "matched_cosine": ("quality_matched_cosine_ratio", "Mean cosine of matched probe pairs."),
    "modality_gap": ("quality_modality_gap", "Distance between image and text centroids."),
    "alignment": ("quality_alignment", "E|x-y|^2 over matched probe pairs (lower is better)."),
    "structure_kl": ("quality_structure_kl", "KL of image-text similarities from the base model."),
    "misalignment": (
        "quality_misalignment",
        "One-sided-drift-weighted structure KL, held over the window.",
    ),
    "misalignment_instant": (
        "quality_misalignment_instant",
        "Misalignment score of the last evaluation alone.",
    ),
}


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r, p = registry, "streamer_"
        self.registry = registry
        self.build = Info(f"{p}build", "Version, model and training setup.", registry=r)
        self.state = Enum(f"{p}state", "Daemon state.", states=STATES, registry=r)
        # Kafka
        self.consumed = Counter(
            f"{p}records_consumed_total", "Records taken from Kafka.", registry=r
        )
        self.trained = Counter(f"{p}records_trained_total", "Records trained on.", registry=r)
        self.probes = Counter(f"{p}records_probe_total", "Records held out as probes.", registry=r)
        self.invalid = Counter(
            f"{p}records_invalid_total", "Refused records.", ["reason"], registry=r
        )
        self.dead_lettered = Counter(
            f"{p}records_dead_lettered_total", "Records sent to the DLQ.", registry=r
        )
        self.rebalances = Counter(f"{p}kafka_rebalances_total", "Assignments received.", registry=r)
        self.assigned = Gauge(f"{p}kafka_assigned_partitions", "Partitions owned.", registry=r)
        self.lag = Gauge(
            f"{p}kafka_partition_lag_records", "Log end minus the next offset to account for.",
            ["partition"], registry=r,
        )  # fmt: skip
        self.buffered = Gauge(
            f"{p}kafka_buffered_records", "Records fetched, not yet trained.", registry=r
        )
        self.last_poll = Gauge(
            f"{p}kafka_last_poll_timestamp_seconds", "Time of the last poll.", registry=r
        )
        self.paused = Gauge(
            f"{p}kafka_paused", "1 while fetching is paused (backpressure).", registry=r
        )
        self.commit_failures = Counter(
            f"{p}kafka_commit_failures_total", "Offset commits refused.", registry=r
        )
        self.latency = Histogram(
            f"{p}record_latency_seconds",
            "From a record's Kafka timestamp to the end of the step that took it in.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # Training
        self.steps = Counter(f"{p}train_steps_total", "Learner steps (fresh batches).", registry=r)
        self.step_seconds = Histogram(
            f"{p}train_step_duration_seconds", "Wall time of one learner step.",
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.loss = Gauge(f"{p}train_loss", "Mean training loss of the last step.", registry=r)
        self.online_accuracy = Gauge(
            f"{p}train_prequential_accuracy_ratio", "Accuracy on the batch before learning it.",
            registry=r,
        )  # fmt: skip
        self.lr = Gauge(f"{p}train_learning_rate", "Current learning rate.", registry=r)
        self.logit_scale = Gauge(f"{p}train_logit_scale", "CLIP temperature exp(t).", registry=r)
        self.nonfinite = Counter(
            f"{p}train_nonfinite_skips_total", "Updates skipped for NaN/Inf.", registry=r
        )
        self.gpu_memory = Gauge(f"{p}gpu_memory_allocated_bytes", "CUDA memory.", registry=r)
        # Replay
        self.replay_items = Gauge(f"{p}replay_items", "Samples held in the buffer.", registry=r)
        self.replay_capacity = Gauge(f"{p}replay_capacity", "Buffer capacity.", registry=r)
        self.replay_bytes = Gauge(f"{p}replay_bytes", "Encoded bytes held.", registry=r)
        # Checkpoints
        self.ckpt_seconds = Histogram(
            f"{p}checkpoint_duration_seconds", "Time to write a checkpoint and commit.",
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.ckpt_failures = Counter(f"{p}checkpoint_failures_total", "Failed writes.", registry=r)
        self.ckpt_last = Gauge(
            f"{p}checkpoint_last_success_timestamp_seconds", "Last durable checkpoint.", registry=r
        )
        # Quality
        self.window_accuracy = Gauge(
            f"{p}quality_window_accuracy_ratio", "Probe accuracy per window.", ["window"],
            registry=r,
        )  # fmt: skip
        self.a_auc = Gauge(
            f"{p}quality_accuracy_auc_ratio", "Anytime accuracy (A_auc).", registry=r
        )
        self.a_last = Gauge(f"{p}quality_accuracy_last_ratio", "Mean accuracy now.", registry=r)
        self.forgetting = Gauge(
            f"{p}quality_forgetting_average_ratio", "Mean forgetting over windows.", registry=r
        )
        self.bwt = Gauge(f"{p}quality_backward_transfer_ratio", "Backward transfer.", registry=r)
        self.alignment = {
            key: Gauge(f"{p}{name}", text, registry=r) for key, (name, text) in ALIGNMENT.items()
        }
        self.uniformity = Gauge(
            f"{p}quality_uniformity", "Uniformity per modality.", ["modality"], registry=r
        )
        self.recall = Gauge(
            f"{p}quality_recall_at_1_ratio", "R@1 per direction.", ["direction"], registry=r
        )
        self.drift = Gauge(
            f"{p}quality_drift_ratio", "1 - cos to the base model, per modality.", ["modality"],
            registry=r,
        )  # fmt: skip
        self.misalignment_threshold = Gauge(
            f"{p}quality_misalignment_threshold", "Misalignment score that alerts (config).",
            registry=r,
        )  # fmt: skip
        self.alarms = Counter(
            f"{p}drift_alarms_total", "Drift detector alarms.", ["signal"], registry=r
        )
        for reason in REASONS:  # known label values start at 0, so rates and alerts see them
            self.invalid.labels(reason)
        for signal in DRIFT_SIGNALS:
            self.alarms.labels(signal)
        # Config (reloads arrive with live tuning; at start the loaded config counts as one)
        self.reload_ok = Gauge(
            f"{p}config_last_reload_successful", "1 if the last config (re)load was accepted.",
            registry=r,
        )  # fmt: skip
        self.reload_time = Gauge(
            f"{p}config_last_reload_success_timestamp_seconds", "Time of the last accepted config.",
            registry=r,
        )  # fmt: skip
        self.config = Info(f"{p}config", "Hash of the config in force.", registry=r)
        self._windows: set[str] = set()
        self.rebalances_seen = 0
        self.lag_partitions: set[str] = set()

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
        for gauge, value in (
            (self.a_auc, report.a_auc),
            (self.a_last, report.a_last),
            (self.forgetting, report.average_forgetting),
            (self.bwt, report.bwt),
        ):
            gauge.set(value)  # fmt: skip
        a = report.alignment
        if a:
            for key, gauge in self.alignment.items():
                gauge.set(a[key])
            self.uniformity.labels("image").set(a["uniformity_image"])
            self.uniformity.labels("text").set(a["uniformity_text"])
            self.recall.labels("image_to_text").set(a["recall_at_1_image_to_text"])
            self.recall.labels("text_to_image").set(a["recall_at_1_text_to_image"])
            self.drift.labels("image").set(a["image_drift"])
            self.drift.labels("text").set(a["text_drift"])
        for signal in report.alarms:
            self.alarms.labels(signal).inc()


class HealthServer:
    """/metrics, /healthz (progress) and /readyz (restored and assigned) on one port."""

    def __init__(
        self,
        registry: CollectorRegistry,
        healthy: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
        host: str = "0.0.0.0",
        port: int = 9100,
    ) -> None:
        routes = {"/healthz": healthy, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path in routes:
                    ok, why = routes[path]()
                    body, status, kind = why.encode() + b"\n", 200 if ok else 503, "text/plain"
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _RankLabelled:
    """Every sample of a registry with a `rank` label added (bounded by the world size)."""

    def __init__(self, registry: CollectorRegistry, rank: int) -> None:
        self.registry, self.rank = registry, str(rank)

    def collect(self):
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


def describe_build(metrics: Metrics, settings: Settings) -> None:
    model, learner = settings.model, settings.learner
    metrics.build.info({
        "version": __version__, "model": model.arch, "pretrained": str(model.pretrained),
        "loss": learner.loss, "peft": model.peft.mode, "towers": model.peft.towers,
    })  # fmt: skip
    metrics.replay_capacity.set(settings.replay.capacity)
    metrics.misalignment_threshold.set(settings.evaluation.misalignment_threshold)
    metrics.reload_ok.set(1)
    metrics.reload_time.set(time.time())
    metrics.config.info({"hash": config_hash(settings)})


def observe_source(
    metrics: Metrics, source: KafkaSource, offsets: dict, replay: ReplayBuffer
) -> None:
    """Gauges read once per loop: assignment, lag, buffering, polling, replay, GPU memory."""
    metrics.assigned.set(len(source.assigned))
    lags = {f"{t}:{p}": max(0, end - offsets.get((t, p), 0))
            for (t, p), end in source.highwater.items() if (t, p) in source.assigned}  # fmt: skip
    for gone in metrics.lag_partitions - lags.keys():  # keep labels to owned partitions
        metrics.lag.remove(gone)
    metrics.lag_partitions = set(lags)
    for partition, lag in lags.items():
        metrics.lag.labels(partition).set(lag)
    metrics.buffered.set(source.lag())
    metrics.paused.set(1 if source.paused else 0)
    if source.last_poll:
        metrics.last_poll.set(source.last_poll)
    metrics.rebalances.inc(source.rebalances - metrics.rebalances_seen)
    metrics.rebalances_seen = source.rebalances
    metrics.replay_items.set(len(replay))
    metrics.replay_bytes.set(replay.nbytes)
    if torch.cuda.is_available():
        metrics.gpu_memory.set(torch.cuda.memory_allocated())
