"""The daemon: records in, checkpointed online learning out; nothing lost or trained twice.

Offsets advance only for records fully accounted for (trained, held out as probes, or
dead-lettered); a checkpoint holds them with the model, and only a durable checkpoint's
offsets are committed. So after any crash, model state and consumed position agree.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry

from streamer.config import Settings
from streamer.evaluation import quality
from streamer.intake.manifest import ManifestError
from streamer.intake.sink import DeadLetterError, DeadLetterSink, KafkaDeadLetters
from streamer.intake.source import Item, Source, SourceFailed
from streamer.learning.distributed import World, resolve_device
from streamer.learning.model import ModelLoadError
from streamer.logs import set_level
from streamer.records import Pair
from streamer.service import health, wiring
from streamer.service.collectors import PipelineCollector, PipelineView
from streamer.service.lifecycle import Stopping
from streamer.service.metrics import Metrics
from streamer.service.persist import Persistence
from streamer.service.pipeline import Engine, Outcome, build_engine
from streamer.service.refusals import DeadLetterFlood, Refusals
from streamer.service.reload import ConfigWatcher
from streamer.state.checkpoint import Checkpointer, CheckpointError
from streamer.state.ledger import Ledger
from streamer.state.lock import DirectoryLock, DirectoryLocked
from streamer.state.rollback import roll_back_live

log = structlog.get_logger(__name__)
FATAL = (DeadLetterFlood, DeadLetterError, CheckpointError, SourceFailed, ManifestError,
         ModelLoadError, DirectoryLocked)  # fmt: skip  # stop without committing; a restart resumes


@dataclass(frozen=True)
class Turn:
    """What every rank does this turn (a flag raised on any rank is raised on all)."""

    train: bool  # some rank has records to learn from (the others join at zero weight)
    checkpoint: bool  # due by rank 0's clock, and some rank has progress to save
    reload: bool  # rank 0 saw the config file change
    stop: bool


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        source: Source | None = None,
        dead_letters: DeadLetterSink | None = None,
        on_step: Callable[[Outcome, Daemon], None] | None = None,
        registry: CollectorRegistry | None = None,
        watcher: ConfigWatcher | None = None,
        world: World | None = None,
    ) -> None:
        self.settings, self.on_step, self.watcher, self.source = settings, on_step, watcher, source
        self.metrics = Metrics(registry or CollectorRegistry())
        self.metrics.registry.register(PipelineCollector(self._view))
        self.world = world or World.from_env(settings.distributed,
                                             resolve_device(settings.learner.device))  # fmt: skip
        self.engine = engine or build_engine(settings, self.world)
        wiring.note_recipe(settings)
        self.ledger = Ledger()
        sink = dead_letters or KafkaDeadLetters(settings.kafka)
        self.refusals = Refusals(sink, settings.dead_letter, self.ledger, self.metrics,
                                 settings.logging.record_error_interval_seconds)  # fmt: skip
        self.persistence = Persistence(Checkpointer(settings.checkpoint), self.world,
                                       self.engine, self.ledger, sink, self.metrics)  # fmt: skip
        self.stopping = Stopping(lambda: self.settings.daemon.grace_seconds)
        self.stop = self.stopping.flag
        self.last_step = time.time()  # the stall clock starts at start-up
        self.last_latencies: list[float] = []  # of the last batch trained
        self.metrics_port: int | None = None
        self.publisher = wiring.publisher(settings, self.world, self.metrics.registry,
                                          lambda: self.engine.learner.steps)  # fmt: skip
        self._become("starting")

    def _become(self, state: str) -> None:
        self.state = state
        self.metrics.state.state(state)

    # -- the run loop --------------------------------------------------------------------
    def run(self) -> int:
        structlog.contextvars.unbind_contextvars("step", "checkpoint")  # not a predecessor's
        self.stopping.install(self.watcher.request if self.watcher is not None else None)
        server = wiring.serve(self.settings.metrics, self.world, self.metrics.registry,
                              self.healthy, self.ready)  # fmt: skip
        self.metrics_port = server.port
        self.metrics.describe(self.settings)
        lock = DirectoryLock(self.settings.checkpoint.dir)  # one writer; rollback checks it
        try:
            if self.world.is_root:
                lock.acquire()  # held for the process's life; the kernel drops it on a kill
            self._become("restoring")
            self.persistence.restore()  # weights, optimizer, replay, evaluator, ledger
            self.source = self.source or wiring.kafka_source(self.settings, self.world, self.engine)
            self.source.start(self.ledger.resume)  # the ledger says where partitions resume
            settle_heap()
            self._become("running")
            if self.publisher is not None:
                self.publisher.start()  # its own thread: exports, gates, publishes
            while not self._turn():
                pass
            self._become("draining")
            if self._checkpoint() is None:  # a graceful stop loses nothing, or says so
                raise DeadLetterError(
                    "dead letters still wait for the broker; the records "
                    "after the last checkpoint are read again on restart"
                )
            return 0
        except FATAL as exc:
            self._become("failed")  # nothing past the last checkpoint is committed
            log.error("stopping without committing", error=str(exc), reason=type(exc).__name__)
            return 1
        finally:
            gc.unfreeze()  # a daemon run again in this process (tests) collects this one's cycles
            self.persistence.close()  # a write in flight finishes (its commit needs the source)
            if self.publisher is not None:
                self.publisher.stop()
            self.refusals.close()
            if self.source is not None:
                self.source.close()
            server.stop()
            lock.release()
            structlog.contextvars.unbind_contextvars("step", "checkpoint")

    def _turn(self) -> bool:
        """One turn: take records, learn, hand over revoked partitions, checkpoint when due,
        reload a changed config. True when it is time to stop."""
        if landed := self.persistence.poll():  # a background checkpoint (raises if it failed)
            structlog.contextvars.bind_contextvars(checkpoint=landed)
        items = self.source.get(self.settings.learner.batch_size,
                                self.settings.kafka.linger_ms / 1000)  # fmt: skip
        turn = self._agree(items)  # every rank decides the same, or collectives hang
        self._process(items, turn.train)  # dead-letter, hold out probes, train
        self._handle_revocation()  # partitions leaving: checkpoint and commit them first
        if turn.checkpoint:
            self._checkpoint(background=self.settings.checkpoint.background
                             and not self.world.active)  # fmt: skip
        if turn.reload:
            self.reload()  # a changed config applies between steps, on every rank
        if self.publisher is not None and self.publisher.rollback_to is not None:
            self._roll_back(self.publisher.rollback_to)  # the gate kept refusing
        return turn.stop

    def _agree(self, items: list[Item]) -> Turn:
        is_probe, root = self.engine.evaluator.is_probe, self.world.is_root
        flags = self.world.agree({
            "train": any(i.pair is not None and not is_probe(i.pair.sample) for i in items),
            "due": self.persistence.due(),
            "dirty": self.ledger.dirty or bool(items),
            "reload": root and self.watcher is not None and self.watcher.changed(),
            "stop": self.stop.is_set(),
        })  # fmt: skip
        return Turn(flags["train"], flags["due"] and flags["dirty"], flags["reload"],
                    flags["stop"])  # fmt: skip

    def _process(self, items: list[Item], train: bool) -> None:
        self.metrics.consumed.inc(len(items))
        self.refusals.observe(items)  # dead letters; a flood stops the daemon
        pairs = [i.pair for i in items if i.pair is not None]
        if pairs or train:
            outcome = self.engine.learn(pairs, step_anyway=train)
            now = time.time()  # produce-to-trained, kept for an on_step hook (benchmarks)
            self.last_latencies = [now - i.raw.timestamp_ms / 1000 for i in items if i.pair]
            self.metrics.observe_latencies(self.last_latencies)
            self._account(pairs, outcome)
        for item in items:
            self.ledger.advance(item.partition, item.raw.offset)

    def _account(self, pairs: list[Pair], outcome: Outcome) -> None:
        self.ledger.add_ids(pair.sample.id for pair in pairs)
        self.ledger.count("probes", outcome.probes)
        self.ledger.count("trained", len(pairs) - outcome.probes)
        self.metrics.probes.inc(outcome.probes)
        self.metrics.trained.inc(len(pairs) - outcome.probes)
        if outcome.report is not None:
            self.metrics.observe_report(outcome.report)
        if outcome.result is not None:
            structlog.contextvars.bind_contextvars(step=outcome.result.step)  # on every line
            self.metrics.observe_step(outcome.result)
            self.last_step = time.time()
            if self.on_step is not None:
                self.on_step(outcome, self)

    def _handle_revocation(self) -> None:
        revocation = self.source.pending_revocation()
        if revocation is None or revocation.done.is_set():
            return
        if self.ledger.touches(revocation.partitions):
            self._checkpoint(extra=frozenset(revocation.partitions))
        revocation.done.set()

    def _roll_back(self, to: str) -> None:
        """publish.auto_rollback: the model of `to`, the offsets and counts of now."""
        if not self.persistence.ready_to_save():
            return  # dead letters wait for the broker: roll back once they are durable
        done = roll_back_live(self.settings.checkpoint.dir, to, self._checkpoint,
                              self.persistence.restore)  # fmt: skip
        self.publisher.rolled_back(done)

    def _checkpoint(self, extra: frozenset = frozenset(), background: bool = False) -> str | None:
        learner = self.engine.learner
        meta = quality.checkpoint_meta(self.settings, self.engine.evaluator, learner.steps,
                                       learner.skipped_nonfinite)  # fmt: skip
        if background:  # its id is bound once it has landed (see _turn)
            self.persistence.begin(self.source, meta)
            return None
        ckpt_id = self.persistence.save_and_commit(self.source, meta, extra)
        if ckpt_id is not None:  # None: postponed while dead letters wait for the broker
            structlog.contextvars.bind_contextvars(checkpoint=ckpt_id)
        return ckpt_id

    # -- live config ---------------------------------------------------------------------
    def reload(self) -> None:
        """Rank 0 reads and validates the file; every rank applies the same outcome."""
        outcome = self.watcher.outcome(self.settings) if self.world.is_root else None
        outcome = self.world.broadcast(outcome)
        if outcome.settings is None:
            self.metrics.reload_ok.set(0)
            log.error("config reload rejected; it stays as it was", problems=outcome.problems)
            return
        new = self.settings = outcome.settings
        self.engine.learner.reconfigure(new.learner)
        self.engine.evaluator.reconfigure(new.evaluation)
        self.persistence.checkpointer.cfg = new.checkpoint
        self.refusals.reconfigure(new.dead_letter, new.logging.record_error_interval_seconds)
        set_level(new.logging.level)
        self.metrics.describe(new)  # reload status, timestamp and hash
        log.info("config reloaded", changes={k: f"{a} -> {b}" for k, (a, b) in
                                             outcome.changes.items()})  # fmt: skip

    # -- health ------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        source = self.source
        return health.healthy(
            self.state, source.stats() if source else None, source.failure() if source else None,
            self.last_step, self.settings.metrics.stall_seconds, time.time(),
        )  # fmt: skip

    def ready(self) -> tuple[bool, str]:
        return health.ready(self.state, self.source.stats() if self.source else None,
                            time.time())  # fmt: skip

    def _view(self) -> PipelineView | None:
        if self.source is None:
            return None
        replay, labels = self.engine.replay, self.engine.learner.label_set
        return PipelineView(self.source.stats(), dict(self.ledger.offsets), len(replay),
                            replay.nbytes, replay.capacity, len(labels),
                            labels.capacity)  # fmt: skip


def settle_heap() -> None:
    """Start-up's objects (~475,000 from torch, open_clip and the rest, held for the process's
    life) leave the cyclic collector's view: each full collection scanned them all, a pause of
    about 220 ms on the training thread at random steps, checkpoint steps included."""
    gc.collect()
    gc.freeze()
