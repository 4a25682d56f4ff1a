"""Gated publishing, on a thread of its own beside the training loop.

Every `publish.every_steps` steps or `every_seconds` seconds the publisher reads the newest
checkpoint (whole, into memory: pruning cannot pull it away mid-export), judges its recorded
quality with the gate, and only if it passes exports it and publishes it as a new immutable
version. Training never waits on it: the loop only reads two of its attributes. An upload
that fails is retried with backoff, then counted and given up until the next checkpoint;
nothing here stops the daemon. After `auto_rollback.after_failures` refusals in a row it
names the last published checkpoint for the daemon to roll back to, at a step boundary.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from streamer.config import PublishConfig
from streamer.evaluation import quality
from streamer.learning.model import ClipModel
from streamer.state import gate
from streamer.state.checkpoint import PUBLISHED, Checkpoint, load_latest
from streamer.state.export import export, model_for
from streamer.state.store import VersionStore

log = structlog.get_logger(__name__)
T = TypeVar("T")


class PublishMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.version = Gauge("streamer_publish_version", "Number of the latest published version "
                             "(0: none yet).", registry=r)  # fmt: skip
        self.last = Gauge("streamer_publish_last_timestamp_seconds",
                          "When a version was last published.", registry=r)  # fmt: skip
        self.passing = Gauge("streamer_publish_gate_passing",
                             "1 if the last checkpoint judged passed the gate, else 0.",
                             registry=r)  # fmt: skip
        self.consecutive = Gauge(
            "streamer_publish_gate_consecutive_failures",
            "Checkpoints refused by the gate in a row.",
            registry=r,
        )
        self.refused = Counter("streamer_publish_gate_failures_total",
                               "Gate refusals by reason (one refusal may have several).",
                               ["reason"], registry=r)  # fmt: skip
        self.retries = Counter("streamer_publish_retries_total", "Upload attempts retried.",
                               registry=r)  # fmt: skip
        self.failures = Counter(
            "streamer_publish_failures_total",
            "Publications given up after every retry.",
            registry=r,
        )
        self.rollbacks = Counter("streamer_rollbacks_total", "Automatic rollbacks to the last "
                                 "published version.", registry=r)  # fmt: skip
        for reason in gate.REASONS:
            self.refused.labels(reason)
        self.passing.set(1)  # nothing refused yet


class Publisher:
    def __init__(
        self,
        cfg: PublishConfig,
        checkpoints: Path,
        metrics: PublishMetrics,
        steps: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
        model: ClipModel | None = None,
    ) -> None:
        self.cfg, self.checkpoints, self.metrics = cfg, Path(checkpoints), metrics
        self._steps = steps
        self._clock = clock
        self.store = VersionStore(cfg.url, cfg.storage_options)
        self.stopping = threading.Event()
        self.judged: str | None = None  # the last checkpoint judged (each is judged once)
        self.consecutive = 0
        self.rollback_to: str | None = None  # set here, taken by the training loop
        self.published: dict | None = None  # the pointer: what was last published
        self._read_pointer = False  # read on the publisher's thread (the store may be down)
        self._model = model  # the export's CPU model (built from the first checkpoint if None)
        self._last_time, self._last_step = clock(), steps()
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def due(self) -> bool:
        return (self._steps() - self._last_step >= self.cfg.every_steps
                or self._clock() - self._last_time >= self.cfg.every_seconds)  # fmt: skip

    def _loop(self) -> None:
        while not self.stopping.wait(0.2):
            if not self.due():
                continue
            self._last_time, self._last_step = self._clock(), self._steps()
            try:
                self.publish_latest()
            except Exception as exc:  # never fatal: counted, logged, tried next time
                self.metrics.failures.inc()
                log.error("publishing failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def publish_latest(self) -> str | None:
        """Judge the newest checkpoint; publish it if it passes. The version, or None."""
        if not self._read_pointer:
            self._resume()
        checkpoint = load_latest(self.checkpoints)
        if checkpoint is None or checkpoint.id == self.judged:
            return None
        previous = self.published["manifest"].get("quality") if self.published else None
        verdict = gate.judge(quality.of(checkpoint.meta), self.cfg.gate, previous)
        if not verdict.passed:
            self.judged = checkpoint.id
            self._refused(checkpoint, verdict)
            return None
        version = self._publish(checkpoint)  # raises after its retries: tried again when due
        self.judged = checkpoint.id
        self.consecutive = 0
        self.metrics.consecutive.set(0)
        self.metrics.passing.set(1)
        return version

    def _resume(self) -> None:
        """What an earlier run published (raises, to retry later, if the store is down)."""
        self.published = self._with_retries(self.store.latest)
        self._read_pointer = True
        if self.published is not None:
            self.metrics.version.set(_number(self.published["version"]))
            self.judged = self.judged or self.published["manifest"]["checkpoint"]

    def _refused(self, checkpoint: Checkpoint, verdict: gate.Verdict) -> None:
        self.consecutive += 1
        self.metrics.passing.set(0)
        self.metrics.consecutive.set(self.consecutive)
        for reason in verdict.reasons:
            self.metrics.refused.labels(reason).inc()
        log.warning("gate refused a checkpoint; not published", checkpoint=checkpoint.id,
                    reasons=list(verdict.reasons), details=list(verdict.details),
                    in_a_row=self.consecutive)  # fmt: skip
        auto = self.cfg.auto_rollback
        if auto.enabled and self.consecutive >= auto.after_failures and self.published:
            self.rollback_to = self.published["manifest"]["checkpoint"]

    def rolled_back(self, done: bool) -> None:
        """The loop rolled back (or could not): start counting refusals afresh."""
        self.rollback_to, self.consecutive = None, 0
        self.metrics.rollbacks.inc(int(done))
        self.metrics.consecutive.set(0)

    def _publish(self, checkpoint: Checkpoint) -> str:
        self._model = self._model or model_for(checkpoint)  # built once, on this thread
        local = Path(tempfile.mkdtemp(prefix="streamer-export-"))
        try:
            export(checkpoint, local, self.cfg.format, self.cfg.blend, self._model)
            version = self._with_retries(lambda: self.store.publish(local))
        finally:
            shutil.rmtree(local, ignore_errors=True)
        self.published = self.store.latest()
        self.metrics.version.set(_number(version))
        self.metrics.last.set(time.time())
        _mark(checkpoint.path, version)
        log.info("published", version=version, checkpoint=checkpoint.id,
                 step=checkpoint.meta.get("step"), url=self.cfg.url)  # fmt: skip
        return version

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        delay, tries = self.cfg.retry_backoff_seconds, 0
        while True:
            try:
                return attempt()
            except Exception as exc:
                if tries >= self.cfg.retries or self.stopping.is_set():
                    raise
                tries += 1
                self.metrics.retries.inc()
                log.warning("publish attempt failed; retrying", error=str(exc)[:300],
                            retry_in=delay)  # fmt: skip
                self.stopping.wait(delay)
                delay *= 2


def _mark(path: Path, version: str) -> None:
    """Keep the checkpoint (checkpoint.keep_published): a rollback target."""
    try:
        (path / PUBLISHED).write_text(version + "\n")
    except OSError as exc:  # pruned meanwhile: published, but no longer a rollback target
        log.warning("cannot mark the published checkpoint", checkpoint=path.name, error=str(exc))


def _number(version: str) -> int:
    return int(version[1:]) if version[1:].isdigit() else 0
