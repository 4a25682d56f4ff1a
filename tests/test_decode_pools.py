"""Decoding in worker processes: the same pixels as in the daemon's own process, fetch order
kept, and a record that crashes or hangs its worker refused with a reason, not fatal."""

from __future__ import annotations

import os
import time

import pytest
import torch

from streamer.intake.pools import PoolDead, ProcessPool, ThreadPool, ready
from streamer.intake.source import Item
from streamer.records import DecodeError, Pair, RawRecord, Sample
from streamer.service.wiring import PortablePixels
from tests.conftest import tiny_settings

pytestmark = pytest.mark.slow  # worker processes start by importing torch


def toy_decode(raw: RawRecord) -> Pair:
    """Module level, so it pickles into a worker: crash, hang, refuse or decode on cue."""
    if raw.value == b"crash":
        os._exit(3)
    if raw.value == b"hang":
        time.sleep(600)
    if raw.value == b"bad":
        raise DecodeError("not_json", "toy")
    return Pair(Sample(id=str(raw.offset), text="t", image=b""),
                torch.full((3, 2, 2), raw.offset, dtype=torch.uint8))  # fmt: skip


def records(values: list[bytes]) -> list[RawRecord]:
    return [RawRecord("t", 0, n, v) for n, v in enumerate(values)]


def drain(pool, raws: list[RawRecord]) -> list[Item]:
    handles = pool.submit_many(raws)
    try:
        return [pool.item(handle) for handle in handles]
    finally:
        pool.shutdown()


def test_worker_processes_give_the_pixels_the_daemon_would(digit_stream):
    from streamer.intake.codec import encode_json
    from streamer.service.pipeline import build_engine

    engine = build_engine(tiny_settings())
    decoder = engine.decoder.with_preprocess(PortablePixels(engine.model))
    raws = [
        RawRecord("t", 0, n, encode_json(s), timestamp_ms=-1)
        for n, s in enumerate(digit_stream[:6])
    ]
    here = [engine.decoder.decode(raw) for raw in raws]
    there = drain(ProcessPool(decoder.decode, 2), raws)
    assert [i.raw.offset for i in there] == list(range(6))  # fetch order
    for mine, theirs in zip(here, there, strict=True):
        assert theirs.pair.sample == mine.sample
        assert theirs.pair.pixels.dtype == torch.uint8
        assert torch.equal(theirs.pair.pixels, mine.pixels)


def test_a_record_that_kills_its_worker_is_refused_and_the_others_decode():
    values = [b"ok", b"ok", b"crash", b"bad", b"ok", b"ok"]
    items = drain(ProcessPool(toy_decode, 2, timeout=60), records(values))
    reasons = [i.error.reason if i.error else "ok" for i in items]
    assert reasons == ["ok", "ok", "decode_crashed", "not_json", "ok", "ok"]
    assert [int(i.pair.pixels[0, 0, 0]) for i in items if i.pair] == [0, 1, 4, 5]


def test_a_record_that_hangs_its_worker_is_refused_after_the_timeout():
    items = drain(ProcessPool(toy_decode, 2, timeout=3), records([b"ok", b"hang", b"ok"]))
    assert [i.error.reason if i.error else "ok" for i in items] == ["ok", "decode_timeout", "ok"]


def test_processes_that_die_on_every_record_are_a_dead_pool():
    pool = ProcessPool(toy_decode, 1, timeout=60)
    with pytest.raises(PoolDead, match="in a row"):
        drain(pool, records([b"crash"] * 4))


def test_a_ready_item_passes_either_pool_unchanged():
    refused = Item(RawRecord("t", 0, 7, None), error=DecodeError("unreadable_record"))
    pool = ThreadPool(toy_decode, 1)
    assert pool.item(ready(refused)) is refused
    pool.shutdown()


@pytest.mark.parametrize("workers", [1, 3])
def test_threads_decode_a_poll_in_chunks_and_hand_items_back_in_order(workers):
    values = [b"bad" if n % 7 == 3 else b"ok" for n in range(40)]
    pool = ThreadPool(toy_decode, workers)
    handles = pool.submit_many(records(values))
    tasks = {id(handle[0]) for handle in handles}
    assert 40 / 16 <= len(tasks) <= max(workers, 40 / 16 + 1)  # chunks, one per worker at least
    items = [pool.item(handle) for handle in handles]
    pool.shutdown()
    assert [i.raw.offset for i in items] == list(range(40))
    assert [i.error.reason if i.error else int(i.pair.sample.id) for i in items] == [
        "not_json" if n % 7 == 3 else n for n in range(40)
    ]
    assert pool.submit_many([]) == []
