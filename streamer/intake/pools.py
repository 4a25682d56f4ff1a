"""Where records are decoded: a pool of threads, or of processes that leave the GIL to training.

Threads share one GIL with the poll thread and the training thread: JSON parsing, base64 and
the Python around Pillow stop scaling at about four of them. Processes each have their own:
a worker holds a copy of the Decoder, takes raw records and sends back the sample and its
uint8 pixels (a numpy array: pickled as plain bytes, no shared-memory handles to leak).

Both are used the same way by the ordering thread: `submit_many` in fetch order, then `item`
on each handle in that order, so a partition's records leave in offset order. Threads take a
poll's records in chunks (one task, one wake-up per chunk, not per record: ~0.1 ms a record
less CPU for the same decoding, measured on 2 cores, CPU that training gets back).

A record that kills its worker process (a crash in a native decoder) breaks the whole
process pool; every record then in flight is decoded again alone in a one-process pool, so
the one that breaks that too is named and refused (`decode_crashed`), and the others go on.
A record that takes longer than the timeout is refused (`decode_timeout`), its pool's
processes are ended and the others in flight retried. A pool that keeps breaking on record
after record with no success between (a worker that cannot start) is a dead pool:
PoolDead, which fails the source.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import structlog
import torch

from streamer.intake.source import Decode, Item, to_item
from streamer.records import DecodeError, Pair, RawRecord

log = structlog.get_logger(__name__)
Handle = tuple[Future, RawRecord | None, Any]  # raw None: the future holds an Item already
CHUNK = 16  # records per thread task: fewer hand-offs, yet a poll's records spread over workers
MAX_BLAMED = 3  # refused crashes in a row, no record decoded between: the pool is dead
STARTUP_SECONDS = 120.0  # a fresh pool's processes import torch first: not the record's time


class PoolDead(RuntimeError):
    """Worker processes cannot decode anything (they die on every record)."""


class DecodePool(Protocol):
    def submit_many(self, raws: list[RawRecord]) -> list[Handle]: ...
    def item(self, handle: Handle) -> Item: ...
    def shutdown(self) -> None: ...


def ready(item: Item) -> Handle:
    """An item decided without decoding (a record kafka-python could not read)."""
    future: Future = Future()
    future.set_result(item)
    return future, None, None


class ThreadPool:
    def __init__(
        self, decode: Decode, workers: int, work: Callable[[RawRecord, Decode], Item] = to_item
    ) -> None:
        self._decode, self._work, self._workers = decode, work, workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode-worker")

    def submit_many(self, raws: list[RawRecord]) -> list[Handle]:
        """Chunks of up to CHUNK records, at least one chunk per worker when there are enough."""
        size = max(1, min(CHUNK, -(-len(raws) // self._workers)))
        handles: list[Handle] = []
        for start in range(0, len(raws), size):
            chunk = raws[start : start + size]
            future = self._pool.submit(self._chunk, chunk)
            handles += [(future, None, i) for i in range(len(chunk))]
        return handles

    def _chunk(self, raws: list[RawRecord]) -> list[Item]:
        return [self._work(raw, self._decode) for raw in raws]

    def item(self, handle: Handle) -> Item:
        future, _, index = handle
        done = future.result()  # CancelledError once shut down
        return done if index is None else done[index]  # None: `ready`

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- in a worker process ------------------------------------------------------------------
_decode: Decode | None = None


def _start(decode: Decode) -> None:
    global _decode
    torch.set_num_threads(1)  # numpy and Pillow do the work; no intra-op pool per worker
    _decode = decode


def _work(raw: RawRecord) -> tuple[Any, Any] | tuple[str, str]:
    try:
        pair = _decode(raw)
    except DecodeError as exc:
        return exc.reason, exc.detail
    return pair.sample, pair.pixels.numpy()


def _as_item(raw: RawRecord, result: tuple) -> Item:
    first, second = result
    if isinstance(first, str):
        return Item(raw, error=DecodeError(first, second))
    return Item(raw, pair=Pair(first, torch.from_numpy(second)))


# -- in the daemon --------------------------------------------------------------------------
class ProcessPool:
    """`decode` must pickle (a Decoder whose preprocessing is a plain object, not a model)."""

    def __init__(self, decode: Decode, workers: int, timeout: float = 30.0) -> None:
        self._decode, self._workers, self.timeout = decode, workers, timeout
        self._lock = threading.Lock()  # the poll and ordering threads both renew the pool
        self._pool = self._new(workers)
        self._alone: ProcessPoolExecutor | None = None
        self._blamed = 0  # crashes refused in a row
        self._warm: set[int] = set()  # pools that have returned a result (started)

    def _new(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                   initializer=_start, initargs=(self._decode,))  # fmt: skip

    def submit_many(self, raws: list[RawRecord]) -> list[Handle]:
        return [self.submit(raw) for raw in raws]  # one task each: timeouts and crashes per record

    def submit(self, raw: RawRecord) -> Handle:
        pool = self._pool
        try:
            return pool.submit(_work, raw), raw, pool
        except BrokenProcessPool:  # broken by a record in flight: a fresh pool for new ones
            pool = self._renew(pool)
            return pool.submit(_work, raw), raw, pool

    def _renew(self, old: ProcessPoolExecutor) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is old:
                self._pool = self._new(self._workers)
                _end(old)
            return self._pool

    def item(self, handle: Handle) -> Item:
        future, raw, pool = handle
        if raw is None:
            return future.result()
        try:
            return self._decoded(raw, future.result(timeout=self._patience(pool)), pool)
        except BrokenProcessPool:
            return self._alone_item(raw)
        except FutureTimeout:
            log.warning("a record hangs a decode worker; refusing it", partition=raw.partition,
                        offset=raw.offset, seconds=self.timeout)  # fmt: skip
            self._renew(pool)  # its others in flight break, and are retried alone
            return Item(raw, error=DecodeError("decode_timeout", f"over {self.timeout:g} s"))

    def _patience(self, pool: ProcessPoolExecutor) -> float:
        return self.timeout + (0.0 if id(pool) in self._warm else STARTUP_SECONDS)

    def _decoded(self, raw: RawRecord, result: tuple, pool: ProcessPoolExecutor) -> Item:
        self._blamed = 0
        self._warm.add(id(pool))
        return _as_item(raw, result)

    def _alone_item(self, raw: RawRecord) -> Item:
        """Decode `raw` in a pool of its own: if that breaks too, the record is the cause."""
        alone = self._alone = self._alone or self._new(1)
        try:
            return self._decoded(raw, alone.submit(_work, raw).result(self._patience(alone)),
                                 alone)  # fmt: skip
        except (BrokenProcessPool, FutureTimeout) as exc:
            _end(alone)
            self._alone = None
            crashed = isinstance(exc, BrokenProcessPool)
            self._blamed += 1
            if self._blamed >= MAX_BLAMED:
                raise PoolDead(f"decode processes died on {self._blamed} records in a row "
                               "with none decoded between") from exc  # fmt: skip
            log.warning("a record kills its decode worker; refusing it", offset=raw.offset,
                        partition=raw.partition, crashed=crashed)  # fmt: skip
            if crashed:
                return Item(raw, error=DecodeError("decode_crashed", "its worker process died"))
            return Item(raw, error=DecodeError("decode_timeout", f"over {self.timeout:g} s"))

    def shutdown(self) -> None:
        for pool in (self._pool, self._alone):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
                _end(pool)


def _end(pool: ProcessPoolExecutor) -> None:
    """End a pool's processes now (a hung worker never returns to take a shutdown)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if hasattr(process, "kill"):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
