"""KafkaSource's threads, without a broker."""

from __future__ import annotations

import time

from streamer.config import KafkaConfig
from streamer.kafka_source import KafkaSource


def test_close_does_not_wait_for_a_decode_thread_whose_poll_thread_died():
    source = KafkaSource(KafkaConfig(topic="pairs"), decode=lambda raw: None)
    source._threads[1].start()  # the decode thread alone: its poll thread is gone
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 2
    assert not source._threads[1].is_alive()
