"""The daemon under trouble: slow steps, a broker restart, a second member in the group."""

from __future__ import annotations

import time

import pytest

from streamer.config import KafkaConfig
from streamer.dev.broker import EmbeddedBroker, free_port
from streamer.dev.produce import publish

from .conftest import (
    ThreadedDaemon,
    accounted,
    committed_offsets,
    daemon_config,
    expected_digest,
    new_topic,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_a_step_longer_than_max_poll_interval_does_not_evict_the_member(
    broker, tmp_path, digit_stream
):
    topic, samples = new_topic(), digit_stream[:120]
    ends = publish(KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), samples)
    config = daemon_config(tmp_path, broker.bootstrap, topic)  # max_poll_interval_ms = 5 s
    runner = ThreadedDaemon(config)
    daemon = runner.daemon
    learn, slow = daemon.engine.learn, {"left": 1}

    def slow_learn(pairs, **kwargs):
        if slow["left"]:
            slow["left"] -= 1
            time.sleep(8)  # longer than max_poll_interval_ms
        return learn(pairs, **kwargs)

    daemon.engine.learn = slow_learn
    with runner:
        wait_until(lambda: accounted(daemon) >= len(samples), 120, "all records")
        wait_until(lambda: not daemon.ledger.dirty, 30, "a checkpoint")
        assert daemon.source.rebalances == 1  # the first assignment only: never evicted
    assert daemon.ledger.digest == expected_digest(samples)
    assert committed_offsets(broker.bootstrap, config["kafka"]["group_id"], list(ends)) == ends


def test_broker_restart_mid_run_keeps_the_daemon_learning(tmp_path, digit_stream):
    port = free_port()
    broker = EmbeddedBroker(port, log_path=tmp_path / "tansu.log").start()
    topic = new_topic()
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
    before, after = digit_stream[:100], digit_stream[100:140]
    publish(kafka, before)
    config = daemon_config(tmp_path, broker.bootstrap, topic)
    try:
        with ThreadedDaemon(config) as daemon:
            wait_until(lambda: accounted(daemon) >= len(before), 120, "records before")
            wait_until(lambda: daemon.ledger.committed, 30, "a commit")
            broker.stop()  # memory-only: topic and offsets are gone
            time.sleep(3)
            broker = EmbeddedBroker(port, log_path=tmp_path / "tansu.log").start()
            publish(kafka, after)  # the recreated topic starts again at offset 0
            wait_until(lambda: accounted(daemon) >= len(before) + len(after), 120, "after")
            assert daemon.state == "running"
        assert daemon.ledger.digest == expected_digest(before + after)
    finally:
        broker.stop()


def test_two_daemons_in_one_group_split_partitions_and_train_each_record_once(
    broker, tmp_path, digit_stream
):
    topic, samples = new_topic(), digit_stream[:480]
    ends = publish(
        KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), samples, partitions=4
    )
    first = ThreadedDaemon(daemon_config(tmp_path / "a", broker.bootstrap, topic))
    second = ThreadedDaemon(daemon_config(tmp_path / "b", broker.bootstrap, topic))
    a, b = first.daemon, second.daemon
    with first:
        wait_until(lambda: accounted(a) > 0, 120, "the first daemon to start learning")
        with second:  # joins mid-stream: a rebalance hands partitions over
            wait_until(lambda: accounted(a) + accounted(b) >= len(samples), 180, "all records")
            wait_until(lambda: not a.ledger.dirty and not b.ledger.dirty, 30, "checkpoints")
            assert a.source.assigned and b.source.assigned
            assert not a.source.assigned & b.source.assigned
    assert accounted(a) + accounted(b) == len(samples)
    assert (a.ledger.digest + b.ledger.digest) % 2**64 == expected_digest(samples)
    group = a.settings.kafka.group_id
    assert committed_offsets(broker.bootstrap, group, list(ends)) == ends
