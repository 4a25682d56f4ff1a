"""Records in from Kafka: a consumer group polled on its own thread, decoded by a pool.

Each fetched record goes to a decode pool (threads or processes, pools.py) in fetch order; an
ordering thread takes results in that order, so items leave in offset order within every
partition. The training thread takes decoded items from a bounded queue. Polling goes on while
steps run (paused when the queue is full), so a long step never evicts this member.
Rebalances go to the training thread, which checkpoints and commits before partitions leave.
A dead thread or process pool, or polling that keeps failing, fails the source (SourceFailed
from `get`, `failure()` for health); a broker outage does not.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from streamer.config import KafkaConfig
from streamer.intake.kafka_group import (
    Listener,
    apply_backpressure,
    assign_share,
    commit_payload,
    consumer_options,
    find_unreadable,
    highwater_marks,
    position,
)
from streamer.intake.outage import PERMANENT, Outage, broker_connected, is_connectivity
from streamer.intake.pools import DecodePool, Handle, ThreadPool, ready
from streamer.intake.source import (
    Decode,
    Item,
    Resume,
    Revocation,
    SourceFailed,
    SourceStats,
    to_item,
)
from streamer.records import DecodeError, Partition, RawRecord

log = structlog.get_logger(__name__)
PAUSED_POLL_SECONDS = 0.5  # paused, a poll this often still serves the group


def _to_item(raw: RawRecord, decode: Decode) -> Item:  # looked up at each call: replaceable
    return to_item(raw, decode)


class KafkaSource:
    def __init__(
        self,
        cfg: KafkaConfig,
        decode: Decode,
        backoff: tuple[float, float] = (1.0, 30.0),
        owns: Callable[[list[int]], list[int]] | None = None,
        workers: int = 1,
        pool: DecodePool | None = None,
    ) -> None:
        self.cfg, self._backoff = cfg, backoff
        self._owns = owns  # a fixed share of partitions (assign), else the group decides
        self._outage = Outage(backoff)
        self._resume: Resume = lambda _p, _g: None
        self._pool = pool or ThreadPool(decode, workers, _to_item)  # or processes (pools.py)
        self._raw: queue.Queue[tuple[Handle, int] | None] = queue.Queue()  # fetch order
        self._ready: queue.Queue[tuple[Item, int]] = queue.Queue()
        self._epochs: dict[Partition, int] = {}  # bumped when a partition leaves us
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._taken = threading.Event()  # the training thread took records: room to refill
        self._consumer: KafkaConsumer | None = None
        self.revocation: Revocation | None = None
        self._failure: str | None = None
        self.assigned: set[Partition] = set()
        self._highwater: dict[Partition, int] = {}
        self._paused, self.rebalances = False, 0
        self._last_poll: float | None = None
        self._threads = [threading.Thread(target=self._guarded(loop), name=name, daemon=True)
                         for loop, name in ((self._poll_loop, "kafka-poll"),
                                            (self._decode_loop, "decode"))]  # fmt: skip

    # -- training thread -----------------------------------------------------------------
    def start(self, resume: Resume) -> None:
        self._resume = resume
        for thread in self._threads:
            thread.start()

    def get(self, max_items: int, timeout: float) -> list[Item]:
        """Up to max_items decoded items, waiting at most `timeout` for the first ones."""
        items: list[Item] = []
        deadline = time.monotonic() + timeout
        while len(items) < max_items and self.revocation is None:
            if self._failure is not None:
                raise SourceFailed(self._failure)
            try:
                wait = min(0.1, max(0.0, deadline - time.monotonic()))
                item, epoch = self._ready.get(timeout=wait)
            except queue.Empty:
                if time.monotonic() >= deadline:
                    break
                continue
            if epoch == self._epochs.get(item.partition, 0):  # else: from a partition we gave up
                items.append(item)
        self._taken.set()
        return items

    def pending_revocation(self) -> Revocation | None:
        return self.revocation

    def commit(self, offsets: dict[Partition, int], metadata: str) -> bool:
        """Commit next-offsets (a checkpoint's); False when the broker refuses or is away.
        Safe from any thread (the training thread, or a checkpoint's writer thread)."""
        consumer = self._consumer
        if consumer is None or not offsets:
            return consumer is not None
        try:
            with self._lock:  # kafka-python 3 runs this on its IO loop; one commit at a time
                consumer.commit(commit_payload(offsets, metadata), timeout_ms=10_000)
            return True
        except (KafkaError, OSError) as exc:
            log.warning("commit failed; the next checkpoint retries", error=str(exc))
            return False

    def failure(self) -> str | None:
        return self._failure

    def stats(self) -> SourceStats:
        return SourceStats(
            frozenset(self.assigned), dict(self._highwater),
            self._raw.qsize() + self._ready.qsize(), self._paused, self._last_poll,
            self.rebalances, self.rebalances > 0, self._outage.since,
        )  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._taken.set()  # a paused poll thread sees the stop at once
        self._raw.put(None)  # wakes the decode thread even if the poll thread died first
        self._pool.shutdown()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        if self._consumer is not None:
            self._consumer.close(autocommit=False)

    # -- failure -------------------------------------------------------------------------
    def fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why
            log.error("record source failed", reason=why)
        self._stop.set()

    def _guarded(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # a dead worker must fail the daemon, not stall it
                log.exception("worker thread died", thread=threading.current_thread().name)
                self.fail(f"{threading.current_thread().name} thread died: "
                          f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip

        return run

    # -- poll thread ---------------------------------------------------------------------
    def _poll_loop(self) -> None:
        consumer = self._connect()
        failing_since: float | None = None
        while consumer is not None and not self._stop.is_set():
            room = self._apply_backpressure(consumer)
            if self._paused:  # wait for training to take records (poll's loop spun 85/s)
                self._taken.wait(PAUSED_POLL_SECONDS)
                self._taken.clear()
                room = self._apply_backpressure(consumer)
            try:  # paused, a poll only serves the group (rebalances, commits)
                batches = consumer.poll(timeout_ms=0 if self._paused else 100, max_records=room)
            except Exception as exc:
                failing_since = None if is_connectivity(exc) else failing_since or time.monotonic()
                self._poll_failed(consumer, exc, failing_since)
                continue
            failing_since = None
            self._outage.observe(broker_connected(consumer))  # poll returns {} while away
            self._last_poll = time.time()
            self._highwater = highwater_marks(consumer)
            for tp, records in batches.items():
                self._enqueue(tp, records)
        self._raw.put(None)

    def _poll_failed(self, consumer: KafkaConsumer, exc: Exception, since: float | None) -> None:
        """An outage is waited out (since None); permanent errors fail at once; a record the
        client cannot parse is skipped; others fail once `poll_error_budget_seconds` passed."""
        cause = f"{type(exc).__name__}: {exc}"[:300]
        if since is None:  # connectivity: not a failure of this daemon
            self._outage.wait_out(cause, self._stop)
        elif isinstance(exc, PERMANENT):
            self.fail(f"cannot consume {self.cfg.topic}: {cause}")
        elif not isinstance(exc, KafkaError) and self._skip_unreadable(consumer, exc):
            return
        elif (seconds := time.monotonic() - since) > self.cfg.poll_error_budget_seconds:
            self.fail(f"polling has failed for {seconds:.0f} s: {cause}")
        else:
            log.warning("poll failed; retrying", error=cause, failing_for=round(seconds, 1))
            self._stop.wait(self._backoff[0])

    def _skip_unreadable(self, consumer: KafkaConsumer, exc: Exception) -> bool:
        """Step over the record kafka-python cannot parse, handing it on as refused."""
        found = find_unreadable(consumer, self._enqueue)
        if found is None:
            log.warning("poll failed and no partition reproduces it", error=str(exc)[:300])
            return False
        tp, offset, error = found
        raw = RawRecord(tp.topic, tp.partition, offset, None)
        detail = f"{type(error).__name__}: {error}"[:200]
        epoch = self._epochs.get((tp.topic, tp.partition), 0)
        refused = Item(raw, error=DecodeError("unreadable_record", detail))
        self._submit(epoch, lambda: [ready(refused)])  # behind the records fetched before it
        consumer.seek(tp, offset + 1)  # the record stays in the topic; its DLQ entry says where
        return True

    def _enqueue(self, tp: TopicPartition, records) -> None:
        epoch = self._epochs.get((tp.topic, tp.partition), 0)
        raws = [RawRecord(tp.topic, tp.partition, r.offset, r.value, r.key,
                          tuple(r.headers or ()), r.timestamp) for r in records]  # fmt: skip
        self._submit(epoch, lambda: self._pool.submit_many(raws))

    def _submit(self, epoch: int, handles: Callable[[], list[Handle]]) -> None:
        try:
            for handle in handles():
                self._raw.put((handle, epoch))
        except RuntimeError:  # closing: the pool is shut; nothing uncommitted is lost
            if not self._stop.is_set():
                raise

    def _connect(self) -> KafkaConsumer | None:
        """Create the consumer, retrying with backoff while the broker is unreachable."""
        while not self._stop.is_set():
            try:
                consumer = KafkaConsumer(**consumer_options(self.cfg))
            except PERMANENT as exc:
                self.fail(f"kafka settings refused: {exc}")
                return None
            except KafkaError as exc:
                self._outage.wait_out(str(exc), self._stop)
                continue
            if self._owns is None:
                consumer.subscribe([self.cfg.topic], listener=Listener(self, consumer))
            elif not self._assign(consumer):
                break
            self._consumer = consumer
            return consumer
        return None

    def _assign(self, consumer: KafkaConsumer) -> bool:
        """Take this rank's share of the topic's partitions, positioned; False when stopped."""
        committed = assign_share(consumer, self.cfg.topic, self._owns, self._stop, self._backoff[0])
        if committed is None:
            return False
        self.positioned(consumer, committed)
        return True

    def positioned(self, consumer: KafkaConsumer, committed: dict) -> None:
        """Seek each newly assigned partition to where the ledger resumes it."""
        for tp, commit in committed.items():
            position(consumer, tp, self._resume, commit, self.cfg.auto_offset_reset)
        self.assigned |= {(tp.topic, tp.partition) for tp in committed}
        self.rebalances += 1
        log.info("partitions assigned", partitions=sorted(self.assigned))

    def _apply_backpressure(self, consumer: KafkaConsumer) -> int:
        """How many records the next poll may take (pausing or resuming the partitions)."""
        buffered = self._raw.qsize() + self._ready.qsize()
        self._paused, room = apply_backpressure(consumer, buffered, self.cfg.queue_records,
                                                self._paused)  # fmt: skip
        return room

    # -- decode pool and its ordering thread ------------------------------------------------
    def _decode_loop(self) -> None:
        """Items in fetch order; a worker's exception kills this thread (failing the source)."""
        while (entry := self._raw.get()) is not None:
            handle, epoch = entry
            try:
                item = self._pool.item(handle)  # PoolDead: processes that cannot decode
            except CancelledError:
                if self._stop.is_set():
                    return  # closing: the pool dropped what was still queued
                raise
            self._ready.put((item, epoch))

    # -- rebalances (kafka-python's IO thread) --------------------------------------------
    def drop(self, partitions: set[Partition]) -> None:
        for p in partitions:
            self._epochs[p] = self._epochs.get(p, 0) + 1
        self.assigned -= partitions

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()
