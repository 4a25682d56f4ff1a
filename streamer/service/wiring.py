"""The daemon's outward parts, built from config: the Kafka source, the HTTP server, and
the publisher."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
import torch
from PIL import Image
from prometheus_client import CollectorRegistry

from streamer.config import MetricsConfig, RecordConfig, Settings
from streamer.intake.decode import default_decode_workers
from streamer.intake.pools import DecodePool, ProcessPool
from streamer.intake.source import Source
from streamer.learning.distributed import World
from streamer.learning.model import ClipModel
from streamer.service.collectors import with_rank
from streamer.service.health import Check, HealthServer

if TYPE_CHECKING:
    from streamer.service.pipeline import Engine
    from streamer.state.publisher import Publisher

log = structlog.get_logger(__name__)


def kafka_source(settings: Settings, world: World, engine: Engine) -> Source:
    from streamer.intake.kafka_source import KafkaSource  # the one consumer of Kafka

    daemon = settings.daemon
    backoff = (daemon.retry_backoff_seconds, daemon.retry_backoff_max_seconds)
    owns = world.owns if world.active else None  # a fixed share, or the group decides
    workers = settings.records.decode_workers or default_decode_workers()
    return KafkaSource(settings.kafka, engine.decoder.decode, backoff, owns, workers,
                       decode_pool(settings.records, engine, workers))  # fmt: skip


def decode_pool(cfg: RecordConfig, engine: Engine, workers: int) -> DecodePool | None:
    """Processes (records.decode_mode), or None: the source's threads."""
    if cfg.decode_mode == "threads" or (cfg.decode_mode == "auto" and workers < 4):
        return None
    if multiprocessing.current_process().daemon:  # it may not start processes of its own
        log.warning("decoding in threads: this is a daemonic process", mode=cfg.decode_mode)
        return None
    portable = engine.decoder.with_preprocess(PortablePixels(engine.model))
    return ProcessPool(portable.decode, workers, cfg.decode_timeout_seconds)


class PortablePixels:
    """ClipModel.pixels without the model, so a decoder can travel to a worker process
    (the same code runs: pixels are identical, tests/test_decode_pools.py)."""

    def __init__(self, model: ClipModel) -> None:
        self.preprocess = model.preprocess
        self._geometry = model._geometry  # what ClipModel.pixels reads, nothing more

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return ClipModel.pixels(self, image)  # type: ignore[arg-type]


def serve(
    cfg: MetricsConfig, world: World, registry: CollectorRegistry, healthy: Check, ready: Check
) -> HealthServer:
    """/metrics, /healthz, /readyz; under torchrun local rank r serves port + r, every
    sample labelled with the rank."""
    port = cfg.port + world.local_rank if cfg.port else 0  # ranks of a node share its host
    served = with_rank(registry, world.rank) if world.active else registry
    return HealthServer(served, healthy, ready, cfg.host, port).start()


def publisher(
    settings: Settings, world: World, registry: CollectorRegistry, steps: Callable[[], int]
) -> Publisher | None:
    """Rank 0's publisher when `publish.enabled` (None otherwise). Its export model is built
    here, before training starts, so its seeded construction never races the loop's RNG."""
    cfg = settings.publish
    if not cfg.enabled or not world.is_root:
        return None
    from streamer.state.publisher import Publisher, PublishMetrics

    if cfg.auto_rollback.enabled and world.active:
        log.warning("publish.auto_rollback is for single-process daemons; it stays off")
        cfg = cfg.model_copy(update={"auto_rollback": cfg.auto_rollback.model_copy(
            update={"enabled": False})})  # fmt: skip
    model = ClipModel(settings.model, torch.device("cpu"), seed=settings.learner.seed)
    return Publisher(cfg, settings.checkpoint.dir, PublishMetrics(registry), steps, model=model)


def note_recipe(settings: Settings) -> None:
    """Say at start-up when nothing keeps what the base knew beyond replay."""
    learner = settings.learner
    if learner.rehearse.manifest is None and learner.regularizer.kind == "none":
        log.info("no rehearsal: nothing of the base's domain is rehearsed, so the base's "
                 "knowledge is kept by replay alone (set learner.rehearse.manifest; "
                 "docs/retention.md)")  # fmt: skip
