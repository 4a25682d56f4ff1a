"""The daemon's two outward parts, built from config: the Kafka source and the HTTP server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamer.collectors import with_rank
from streamer.config import MetricsConfig, Settings
from streamer.distributed import World
from streamer.health import Check, HealthServer
from streamer.source import Decode, Source


def kafka_source(settings: Settings, world: World, decode: Decode) -> Source:
    from streamer.kafka_source import KafkaSource  # the one consumer of Kafka

    daemon = settings.daemon
    backoff = (daemon.retry_backoff_seconds, daemon.retry_backoff_max_seconds)
    owns = world.owns if world.active else None  # a fixed share, or the group decides
    return KafkaSource(settings.kafka, decode, backoff, owns)


def serve(
    cfg: MetricsConfig, world: World, registry: CollectorRegistry, healthy: Check, ready: Check
) -> HealthServer:
    """/metrics, /healthz, /readyz; under torchrun local rank r serves port + r, every
    sample labelled with the rank."""
    port = cfg.port + world.local_rank if cfg.port else 0  # ranks of a node share its host
    served = with_rank(registry, world.rank) if world.active else registry
    return HealthServer(served, healthy, ready, cfg.host, port).start()
