"""Checkpoint, then commit; and restore. The order is the guarantee:

1. dead letters durable (their offsets are about to be committed);
2. every rank hands rank 0 its shard (a barrier: all ranks are at this step);
3. rank 0 writes one checkpoint: temp dir, fsync, rename; announced to all ranks;
4. only then each rank commits its own partitions' offsets, metadata naming the checkpoint
   and the ledger's lineage. A failed write commits nothing.

Dead letters held for an unreachable broker postpone the checkpoint (with back-off) instead
of failing: training goes on, and nothing past them is written or committed until they are
durable.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from streamer.intake.sink import DeadLetterSink, DeadLettersPending
from streamer.intake.source import Source
from streamer.learning.distributed import World
from streamer.records import Partition
from streamer.service.metrics import Metrics
from streamer.service.pipeline import Engine
from streamer.state import snapshot
from streamer.state.checkpoint import Checkpointer, CheckpointError
from streamer.state.ledger import Ledger

log = structlog.get_logger(__name__)


class Persistence:
    def __init__(
        self,
        checkpointer: Checkpointer,
        world: World,
        engine: Engine,
        ledger: Ledger,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
    ) -> None:
        self.checkpointer = checkpointer
        self.world = world
        self.engine = engine
        self.ledger = ledger
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.last: str | None = None  # id of the last durable checkpoint
        self._hold = _Hold()  # postponed while dead letters wait for the broker

    def due(self) -> bool:
        steps = self.engine.learner.steps
        return self.world.is_root and self.checkpointer.due(steps) and self._hold.over()

    def ready_to_save(self) -> bool:
        """False while a checkpoint is postponed (dead letters wait for the broker)."""
        return self._hold.idle

    def save_and_commit(
        self, source: Source | None, meta: dict[str, Any], extra: frozenset[Partition]
    ) -> str:
        """Steps 1-4 above; raises CheckpointError (nothing committed) if the write fails;
        None (nothing written or committed) while dead letters wait for the broker."""
        started = time.monotonic()
        try:
            ckpt_id = self._save(meta)
        except CheckpointError:
            self.metrics.ckpt_failures.inc()
            raise
        except DeadLettersPending as exc:
            self._hold.postpone(str(exc))
            return None
        self._hold.clear()
        self.last = ckpt_id
        self.ledger.checkpointed()
        if source is not None:
            owned = source.stats().assigned | extra
            offsets = self.ledger.to_commit(owned)
            if source.commit(offsets, self.ledger.commit_metadata(ckpt_id)):
                self.ledger.note_commit(offsets)
            else:
                self.ledger.count("commit_failures")
                self.metrics.commit_failures.inc()
        self.metrics.ckpt_seconds.observe(time.monotonic() - started)
        self.metrics.ckpt_last.set(time.time())
        log.info("checkpoint", id=ckpt_id, step=meta.get("step"),
                 offsets=self.ledger.shard()["offsets"])  # fmt: skip
        return ckpt_id

    def _save(self, meta: dict[str, Any]) -> str:
        held = None
        try:
            self.dead_letters.flush()
        except DeadLettersPending as exc:
            held = exc
        if self.world.agree({"held": held is not None})["held"]:  # every rank, or none
            raise held or DeadLettersPending("another rank's dead letters wait for the broker")
        state = self.engine.state_dict()
        learner = dict(state["learner"])
        shared = snapshot.Shared(learner.pop("weights"), learner.pop("optimizer"))
        shard: snapshot.Shard = {
            "learner": learner, "replay": state["replay"], "evaluator": state["evaluator"],
            "ledger": self.ledger.shard(),
            "fingerprint": snapshot.fingerprint(shared.weights) if self.world.active else "",
        }  # fmt: skip
        shards = self.world.gather(shard)
        written = snapshot.write(self.checkpointer, shards, shared, meta) if shards else None
        written = self.world.broadcast(written)
        if written.error is not None:
            raise CheckpointError(written.error)
        return written.id

    def restore(self) -> str | None:
        """The newest usable checkpoint into engine and ledger; None: a fresh start."""
        skipped_before = self.checkpointer.skipped
        restored = snapshot.share_out(self.world, self.checkpointer, self._apply)
        skipped = self.checkpointer.skipped - skipped_before  # rank 0 reads; it counts
        self.metrics.ckpt_unreadable.inc(skipped)
        fell_back = self.world.broadcast(skipped > 0)
        self.ledger.fell_back = restored is not None and fell_back  # see Ledger.resume
        if restored is None:
            if self.world.active:  # a new job: every rank starts from rank 0's weights
                model = self.engine.model
                model.load_trainable_state(self.world.broadcast(model.trainable_state()))
                self.ledger.lineage = self.world.broadcast(self.ledger.lineage)
            log.info("no checkpoint; starting from the base model", lineage=self.ledger.lineage)
            return None
        self.last = restored.id
        log.info("restored", id=restored.id, step=self.engine.learner.steps,
                 lineage=self.ledger.lineage)  # fmt: skip
        return restored.id

    def _apply(self, restored: snapshot.Restored) -> None:
        shard = restored.shard
        learner = {**shard["learner"], "weights": restored.shared.weights,
                   "optimizer": restored.shared.optimizer}  # fmt: skip
        self.engine.load_state_dict(
            {"learner": learner, "replay": shard["replay"], "evaluator": shard["evaluator"]}
        )
        self.ledger.restore(shard["ledger"])


class _Hold:
    """Checkpoints postponed while dead letters wait: retried after 1, 2, 4 ... 30 s."""

    def __init__(self, first: float = 1.0, longest: float = 30.0) -> None:
        self._first, self._longest = first, longest
        self._delay, self._until = first, 0.0

    def over(self) -> bool:
        return time.monotonic() >= self._until

    @property
    def idle(self) -> bool:
        return self._until == 0.0

    def postpone(self, why: str) -> None:
        log.warning("checkpoint postponed: dead letters are not durable yet", reason=why,
                    retry_in=self._delay)  # fmt: skip
        self._until = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self._longest)

    def clear(self) -> None:
        self._delay, self._until = self._first, 0.0
