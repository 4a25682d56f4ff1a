"""Collectors read at scrape time: the source, ledger, replay and label-set figures the
daemon owns elsewhere (client_python's idiom, as ProcessCollector does), and a rank label
for every sample under torchrun."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from streamer.intake.source import SourceStats
from streamer.records import Partition

P = "streamer_"


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
        away = s.disconnected_since
        yield _gauge("kafka_disconnected_seconds",
                     "How long no broker has been reachable (0 while connected).",
                     max(0.0, time.time() - away) if away is not None else 0.0)  # fmt: skip
        yield CounterMetricFamily(f"{P}kafka_rebalances", "Assignments received.",
                                  value=s.rebalances)  # fmt: skip
        yield _gauge("replay_items", "Samples held in the buffer.", view.replay_items)
        yield _gauge("replay_capacity", "Buffer capacity.", view.replay_capacity)
        yield _gauge(
            "replay_bytes",
            "Replay bytes held: encoded images or pixels, and texts (replay.max_bytes bounds it).",
            view.replay_bytes,
        )
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
