"""The daemon: Kafka in, checkpointed online learning out; nothing lost or trained twice.

Offsets advance only for records fully accounted for (trained, held out as probes, or
dead-lettered); a checkpoint holds them with the model, and only a durable checkpoint's
offsets are committed. So after any crash, model state and consumed position agree.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import structlog
from prometheus_client import CollectorRegistry

from streamer import codec, snapshot
from streamer.checkpoint import Checkpointer, CheckpointError
from streamer.config import Settings, config_hash
from streamer.distributed import World
from streamer.learner import resolve_device
from streamer.logs import RateLimited, set_level
from streamer.metrics import HealthServer, Metrics, describe_build, observe_source, with_rank
from streamer.pipeline import Engine, Outcome, build_engine, pair_of
from streamer.records import Pair, RawRecord
from streamer.reload import ConfigWatcher, ReloadRejected
from streamer.sink import DeadLetterError, DeadLetters
from streamer.source import Item, KafkaSource, Partition

log = structlog.get_logger(__name__)


class DeadLetterFlood(RuntimeError):
    """Too large a share of recent records is invalid: a broken producer, not bad luck."""


def id_hash(sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "big")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        engine: Engine | None = None,
        on_step: Callable[[Outcome, Daemon], None] | None = None,
        registry: CollectorRegistry | None = None,
        watcher: ConfigWatcher | None = None,
        world: World | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(registry or CollectorRegistry())
        self.state = "starting"
        device = resolve_device(settings.learner.device)
        self.world = world or World.from_env(settings.distributed, device)  # torchrun, or one
        self.engine = engine or build_engine(settings, self.world)
        self.checkpointer = Checkpointer(settings.checkpoint)
        self.dead_letters = DeadLetters(settings.kafka)
        self.on_step = on_step
        self.watcher = watcher  # live config: the file is re-read at step boundaries
        self.offsets: dict[Partition, int] = {}  # next offset per partition, accounted for
        self.counts: Counter[str] = Counter()  # trained, probes, dead_lettered, invalid:<reason>
        self.digest = 0  # sum of id hashes of trained and probe records, mod 2**64
        self.stop = threading.Event()
        self.last_checkpoint: str | None = None
        self.last_step_time = time.time()  # the stall clock starts at start-up
        self.last_latencies: list[float] = []  # produce-to-trained seconds of the last batch
        self._invalid = deque(maxlen=settings.dead_letter.window)
        interval = settings.logging.record_error_interval_seconds
        self._refused = RateLimited(log, "record refused", interval)
        self._dirty: set[Partition] = set()  # advanced since the last checkpoint
        self._signals = 0
        self.source: KafkaSource | None = None

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        self._state = value
        self.metrics.state.state(value)

    # -- the run loop --------------------------------------------------------------------
    def run(self) -> int:
        self._install_signal_handlers()
        server = self._serve_metrics()
        self._restore()  # weights, optimizer, replay, evaluator, offsets
        kafka, daemon = self.settings.kafka, self.settings.daemon
        backoff = (daemon.retry_backoff_seconds, daemon.retry_backoff_max_seconds)
        owns = self.world.owns if self.world.active else None  # a fixed share, or the group's
        self.source = KafkaSource(kafka, self._decode, self.offsets, backoff, owns)
        self.source.start()
        self.state = "running"
        try:
            while True:
                items = self.source.get(self.settings.learner.batch_size, kafka.linger_ms / 1000)
                turn = self._agree(items)  # every rank decides the same, or collectives hang
                self._process(items, turn["train"])  # dead-letter, hold out probes, train
                self._handle_revocation()  # partitions leaving: checkpoint and commit them first
                if turn["due"] and turn["dirty"]:
                    self.checkpoint_and_commit()
                observe_source(self.metrics, self.source, self.offsets, self.engine.replay)
                if turn["reload"]:
                    self.reload()  # a changed config applies between steps, on every rank
                if turn["stop"]:
                    break
            self.state = "draining"
            self.checkpoint_and_commit()  # a graceful stop loses nothing
            return 0
        except (DeadLetterFlood, DeadLetterError, CheckpointError) as exc:
            self.state = "failed"  # nothing past the last checkpoint is committed
            log.error("stopping without committing", error=str(exc), reason=type(exc).__name__)
            return 1
        finally:
            self._refused.flush()
            self.source.close()
            self.dead_letters.close()
            server.stop()

    def _agree(self, items: list[Item]) -> dict[str, bool]:
        """What every rank does this turn: train (at zero weight without data), checkpoint
        (rank 0's clock, any rank's progress), reload (rank 0 reads the file), stop."""
        evaluator, root = self.engine.evaluator, self.world.is_root
        train = any(i.error is None and not evaluator.is_probe(i.pair.sample) for i in items)
        return self.world.agree({
            "train": train,
            "due": root and self.checkpointer.due(self.engine.learner.steps),
            "dirty": bool(self._dirty or items),
            "reload": root and self.watcher is not None and self.watcher.changed(),
            "stop": self.stop.is_set(),
        })  # fmt: skip

    def _serve_metrics(self) -> HealthServer:
        cfg, world = self.settings.metrics, self.world
        port = cfg.port + world.local_rank if cfg.port else 0  # ranks of a node share its host
        registry = with_rank(self.metrics.registry, world.rank) if world.active else None
        server = HealthServer(
            registry or self.metrics.registry, self.healthy, self.ready, cfg.host, port
        )
        self.metrics_port = server.port
        describe_build(self.metrics, self.settings)
        return server.start()

    def healthy(self) -> tuple[bool, str]:
        """Progress: polling goes on, and steps go on while records wait."""
        stall, now = self.settings.metrics.stall_seconds, time.time()
        source = self.source
        if self.state == "failed":
            return False, "failed"
        if source is not None and source.last_poll and now - source.last_poll > stall:
            return False, f"no poll for {now - source.last_poll:.0f} s"
        if source is not None and source.lag() > 0 and now - self.last_step_time > stall:
            return False, f"no step for {now - self.last_step_time:.0f} s with records waiting"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.state != "running" or self.source is None or not self.source.rebalances:
            return False, f"{self.state}, not yet in the group"
        return True, f"running with {len(self.source.assigned)} partitions"

    def _process(self, items: list[Item], train: bool) -> None:
        self.metrics.consumed.inc(len(items))
        pairs: list[Pair] = []
        for item in items:
            self._invalid.append(item.error is not None)
            if item.error is not None:
                self._dead_letter(item)
            else:
                pairs.append(item.pair)
        self._check_flood()
        if pairs or train:
            outcome = self.engine.learn(pairs, step_anyway=train)
            now = time.time()
            self.last_latencies = [
                now - i.raw.timestamp_ms / 1000 for i in items if i.error is None
            ]
            self.metrics.observe_latencies(self.last_latencies)
            self._account(pairs, outcome)
        for item in items:
            self.offsets[item.partition] = item.raw.offset + 1
            self._dirty.add(item.partition)

    def _account(self, pairs: list[Pair], outcome: Outcome) -> None:
        for pair in pairs:
            self.digest = (self.digest + id_hash(pair.sample.id)) % 2**64
        self.counts["probes"] += outcome.probes
        self.counts["trained"] += len(pairs) - outcome.probes
        self.metrics.probes.inc(outcome.probes)
        self.metrics.trained.inc(len(pairs) - outcome.probes)
        if outcome.report is not None:
            self.metrics.observe_report(outcome.report)
        if outcome.result is not None:
            structlog.contextvars.bind_contextvars(step=outcome.result.step)  # on every line
            self.metrics.observe_step(outcome.result)
            self.last_step_time = time.time()
            if self.on_step is not None:
                self.on_step(outcome, self)

    def _dead_letter(self, item: Item) -> None:
        self.dead_letters.send(item.raw, item.error.reason, item.error.detail)
        self.counts["dead_lettered"] += 1
        self.counts[f"invalid:{item.error.reason}"] += 1
        self.metrics.dead_lettered.inc()
        self.metrics.invalid.labels(item.error.reason).inc()
        self._refused(
            item.error.reason, detail=item.error.detail[:200],
            topic=item.raw.topic, partition=item.raw.partition, offset=item.raw.offset,
        )  # fmt: skip

    def _check_flood(self) -> None:
        window, limit = self._invalid, self.settings.dead_letter.max_share
        if len(window) == window.maxlen and sum(window) / len(window) > limit:
            raise DeadLetterFlood(
                f"{sum(window)} of the last {len(window)} records were invalid "
                f"(limit {limit:.0%}); fix the producer or raise dead_letter.max_share"
            )

    def _decode(self, raw: RawRecord) -> Pair:
        """Runs on the source's decode thread: envelope, then image, both with limits."""
        records = self.settings.records
        sample = codec.parse(raw, self.settings.kafka.codec, records)
        return pair_of(self.engine.model, sample, codec.image_limits(records))

    # -- live config ---------------------------------------------------------------------
    def maybe_reload(self) -> None:
        if self.watcher is not None and self.watcher.changed():
            self.reload()

    def reload(self) -> None:
        """Rank 0 reads and validates the file; every rank applies the same outcome."""
        outcome: tuple | None = None
        if self.world.is_root:
            try:
                outcome = (*self.watcher.load(self.settings), [])
            except ReloadRejected as exc:
                outcome = (None, {}, exc.problems)
        new, changes, problems = self.world.broadcast(outcome)
        if new is None:
            self.metrics.reload_ok.set(0)
            log.error("config reload rejected; the current config stays", problems=problems)
            return
        self.settings = new
        self.engine.learner.reconfigure(new.learner)
        self.engine.evaluator.reconfigure(new.evaluation)
        self.checkpointer.cfg = new.checkpoint
        self._invalid = deque(self._invalid, maxlen=new.dead_letter.window)
        self._refused.interval = new.logging.record_error_interval_seconds
        set_level(new.logging.level)
        self.metrics.lr.set(new.learner.lr)
        describe_build(self.metrics, new)  # reload status, timestamp and hash
        log.info("config reloaded", changes={k: f"{a} -> {b}" for k, (a, b) in changes.items()})

    # -- checkpoints and offsets ---------------------------------------------------------
    def checkpoint_and_commit(self, extra: set[Partition] = frozenset()) -> None:
        """Dead letters durable, then the checkpoint, then (only then) the offsets."""
        started = time.monotonic()
        try:
            self._checkpoint_and_commit(extra)
        except CheckpointError:
            self.metrics.ckpt_failures.inc()
            raise
        self.metrics.ckpt_seconds.observe(time.monotonic() - started)
        self.metrics.ckpt_last.set(time.time())

    def _checkpoint_and_commit(self, extra: set[Partition]) -> None:
        """Every rank hands rank 0 its shard; rank 0 writes one checkpoint; once it is
        durable (announced to all), each rank commits its own partitions' offsets."""
        self.dead_letters.flush()
        shards = self.world.gather(self._shard())  # a barrier: every rank is at this step
        extra_meta = {"step": self.engine.learner.steps, "config_hash": config_hash(self.settings)}
        outcome = snapshot.write(self.checkpointer, shards, extra_meta) if shards else None
        ckpt_id, error = self.world.broadcast(outcome)
        if error is not None:
            raise CheckpointError(error)
        self.last_checkpoint = ckpt_id
        structlog.contextvars.bind_contextvars(checkpoint=ckpt_id)
        self._dirty.clear()
        if self.source is not None:
            self.source.start_offsets.update(self.offsets)
            owned = self.source.assigned | set(extra)
            mine = {p: o for p, o in self.offsets.items() if p in owned}
            if not self.source.commit(mine, ckpt_id):
                self.counts["commit_failures"] += 1
                self.metrics.commit_failures.inc()
        log.info("checkpoint", id=ckpt_id, step=extra_meta["step"],
                 offsets=snapshot.offset_keys(self.offsets))  # fmt: skip

    def _shard(self) -> snapshot.Shard:
        """This rank's part of a checkpoint; weights and optimizer only from rank 0."""
        state = self.engine.state_dict()
        weights = state["learner"].pop("weights")
        optimizer = state["learner"].pop("optimizer")
        return {
            **state,
            "offsets": snapshot.offset_keys(self.offsets),
            "counts": dict(self.counts),
            "digest": str(self.digest),
            "fingerprint": snapshot.fingerprint(weights) if self.world.active else "",
            "shared": (weights, optimizer) if self.world.is_root else None,
        }

    def _restore(self) -> None:
        """Rank 0 reads the newest checkpoint; every rank gets the weights and its shard."""
        self.state = "restoring"
        found, shard = snapshot.share_out(self.world, self.checkpointer)
        if shard is None:
            if self.world.active:  # a new job: every rank starts from rank 0's weights
                model = self.engine.model
                model.load_trainable_state(self.world.broadcast(model.trainable_state()))
            log.info("no checkpoint; starting from the base model")
            return
        self.engine.load_state_dict(shard)
        self.offsets = snapshot.parse_offsets(shard["offsets"])
        self.counts = Counter({k: int(v) for k, v in shard["counts"].items()})
        self.digest = int(shard["digest"])
        self.last_checkpoint = found
        log.info("restored", id=found, step=self.engine.learner.steps)

    def _handle_revocation(self) -> None:
        revocation = self.source.pending_revocation()
        if revocation is None or revocation.done.is_set():
            return
        if revocation.partitions & self._dirty:
            self.checkpoint_and_commit(extra=revocation.partitions)
        revocation.done.set()

    # -- signals -------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.watcher is not None:
            signal.signal(signal.SIGHUP, lambda *_: self.watcher.request())

    def _on_signal(self, signum: int, _frame: object) -> None:
        """First signal: finish the step, checkpoint, commit, exit. Second: exit at once."""
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)
        log.info("stopping", signal=signal.Signals(signum).name)
        self.stop.set()
        grace = self.settings.daemon.grace_seconds
        timer = threading.Timer(grace, lambda: os._exit(1))  # past the grace, do not linger
        timer.daemon = True
        timer.start()
