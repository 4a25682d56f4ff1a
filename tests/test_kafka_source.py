"""KafkaSource's threads, without a broker."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import torch
from kafka import TopicPartition

from streamer.config import KafkaConfig
from streamer.intake import kafka_source
from streamer.intake.kafka_group import backpressure
from streamer.intake.kafka_source import KafkaSource
from streamer.records import DecodeError, Pair, Sample


def test_close_does_not_wait_for_a_decode_thread_whose_poll_thread_died():
    source = KafkaSource(KafkaConfig(topic="pairs"), decode=lambda raw: None)
    source._threads[1].start()  # the decode thread alone: its poll thread is gone
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 2
    assert not source._threads[1].is_alive()


def _record(offset: int) -> SimpleNamespace:  # what kafka-python's fetch hands the poll
    return SimpleNamespace(offset=offset, value=b"v", key=None, headers=[], timestamp=0)


def test_the_decode_pool_keeps_offset_order_within_each_partition():
    """Workers finish in any order (random decode times); items still leave in fetch order,
    so the ledger's offsets stay exact."""
    delays = random.Random(0)

    def decode(raw):
        time.sleep(delays.random() * 0.004)
        if raw.offset % 7 == 3:
            raise DecodeError("bad_json", "refused, in its place")
        return Pair(Sample(f"{raw.partition}-{raw.offset}", b"x", "t"), torch.zeros(1))

    source = KafkaSource(KafkaConfig(topic="pairs"), decode=decode, workers=4)
    source._threads[1].start()  # the ordering thread; records handed in as the poll would
    try:
        for start in range(0, 200, 20):  # fetches of 20, the two partitions interleaved
            for partition in (0, 1):
                batch = [_record(o) for o in range(start, start + 20)]
                source._enqueue(TopicPartition("pairs", partition), batch)
        items: list = []
        deadline = time.monotonic() + 20
        while len(items) < 400 and time.monotonic() < deadline:
            items += source.get(400 - len(items), timeout=1)
    finally:
        source.close()
    for partition in (0, 1):
        mine = [i for i in items if i.raw.partition == partition]
        assert [i.raw.offset for i in mine] == list(range(200))
        assert all((i.error is not None) == (i.raw.offset % 7 == 3) for i in mine)
        assert all(i.pair.sample.id == f"{partition}-{i.raw.offset}" for i in mine if i.pair)


def test_fetched_batches_are_checksummed_in_c():
    """kafka-python falls back to a pure-Python CRC-32C on the poll thread (8 ms per 50 KB,
    holding the GIL) when the crc32c package is missing: a cap on intake, not an error."""
    from kafka.record import util

    assert util.crc32c_c is not None


def test_records_fetched_while_closing_are_dropped_not_a_crash():
    source = KafkaSource(KafkaConfig(topic="pairs"), decode=lambda raw: None, workers=2)
    source.close()  # the poll thread may still hand in a fetch it made just before
    source._enqueue(TopicPartition("pairs", 0), [_record(0)])  # uncommitted: re-read later
    assert source.failure() is None


def test_the_queue_refills_in_small_steps_and_a_poll_never_overfills_it():
    cap, paused, buffered, refills = 2048, False, 0, []
    for _ in range(400):  # a poll thread and a consumer taking 32 a turn
        paused, room = backpressure(buffered, cap, paused)
        assert buffered + (0 if paused else room) <= max(cap, buffered) and room >= 1
        if not paused:
            refills.append(room)
            buffered += room
        buffered = max(0, buffered - 32)
    assert max(refills[20:]) <= cap // 64 + 32  # past the first fill: a 64th at a time
    assert backpressure(0, cap, True) == (False, 500)  # drained: resumed, a full poll
    assert backpressure(5000, cap, False) == (True, 1)  # over (a rebalance's refetch): paused


class _Consumer:
    """What the poll loop asks of a consumer: one partition, each poll fetching what it may."""

    def __init__(self) -> None:
        self.tp, self.polls, self.next, self._paused = TopicPartition("pairs", 0), [], 0, set()
        self._client = SimpleNamespace(cluster=SimpleNamespace(brokers=lambda: []))

    def assignment(self):
        return {self.tp}

    def pause(self, *tps):
        self._paused |= set(tps)

    def resume(self, *tps):
        self._paused -= set(tps)

    def paused(self):
        return set(self._paused)

    def highwater(self, tp):
        return None

    def poll(self, timeout_ms: int, max_records: int):
        self.polls.append((time.monotonic(), bool(self._paused)))
        if self._paused:
            return {}
        batch = [_record(o) for o in range(self.next, self.next + max_records)]
        self.next += max_records
        return {self.tp: batch}


def test_a_full_queue_sleeps_the_poll_thread_until_records_are_taken(monkeypatch):
    """Paused, the poll thread neither spins in poll (kafka-python's loop ran ~85 times a
    second) nor stops polling (the group needs it); a take refills at once."""
    cfg = KafkaConfig(topic="pairs", queue_records=128)
    source = KafkaSource(cfg, decode=lambda raw: Pair(Sample(str(raw.offset), b"x", "t"),
                                                      torch.zeros(1)))  # fmt: skip
    consumer = _Consumer()
    source._connect = lambda: consumer  # type: ignore[method-assign]
    source.start(lambda _p, _g: None)
    try:
        deadline = time.monotonic() + 10
        while source.stats().buffered < 128 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert source.stats().paused
        time.sleep(1.5)
        paused_polls = [t for t, paused in consumer.polls if paused]
        assert 1 <= len(paused_polls) <= 6  # about every 0.5 s, not 85 a second
        monkeypatch.setattr(kafka_source, "PAUSED_POLL_SECONDS", 30.0)
        time.sleep(0.7)  # the poll thread now waits up to 30 s
        fetched = consumer.next
        taken = source.get(32, timeout=1)
        took = time.monotonic()
        while consumer.next == fetched and time.monotonic() < took + 10:
            time.sleep(0.01)
        assert time.monotonic() - took < 5  # woken by the take, not by the wait running out
        items = taken + source.get(1000, timeout=1)
    finally:
        source.close()
    assert [i.raw.offset for i in items] == list(range(len(items)))
