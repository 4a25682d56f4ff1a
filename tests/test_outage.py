"""A broker outage is waited out: not ready, still live, dead letters held, nothing committed
past them; errors that mean the data cannot be read are not mistaken for one."""

from __future__ import annotations

import time
from types import SimpleNamespace

from kafka import errors
from prometheus_client import CollectorRegistry

from streamer.config import KafkaConfig
from streamer.intake.kafka_source import KafkaSource
from streamer.intake.outage import Outage, is_connectivity
from streamer.intake.sink import MemoryDeadLetters
from streamer.intake.source import MemorySource, SourceStats
from streamer.service import health
from streamer.service.collectors import PipelineCollector, PipelineView

from .test_daemon import TOPIC, Run, _records, _settings

NOW = 10_000.0


def _stats(**fields) -> SourceStats:
    return SourceStats(assigned=frozenset({(TOPIC, 0)}), joined=True, **fields)


def test_an_outage_makes_the_daemon_not_ready_but_keeps_it_live():
    away = _stats(last_poll=NOW - 3600, disconnected_since=NOW - 3600)
    assert health.ready("running", away, NOW) == (
        False, "no broker reachable for 3600 s; retrying"
    )  # fmt: skip
    assert health.healthy("running", away, None, NOW - 3600, 300, NOW) == (True, "ok")
    back = _stats(last_poll=NOW)
    assert health.ready("running", back, NOW)[0]


def test_a_poll_loop_that_stopped_while_connected_still_fails_liveness():
    stuck = _stats(last_poll=NOW - 301)
    assert health.healthy("running", stuck, None, NOW, 300, NOW) == (False, "no poll for 301 s")


def test_connectivity_errors_are_waited_out_and_data_errors_are_not():
    for waited in (errors.KafkaConnectionError(), errors.KafkaTimeoutError(),
                   errors.NodeNotReadyError(), errors.CoordinatorNotAvailableError(),
                   errors.NotLeaderForPartitionError()):  # fmt: skip
        assert is_connectivity(waited), waited
    for loud in (errors.UnsupportedCodecError(), errors.KafkaConfigurationError(),
                 errors.CorruptRecordError(), errors.TopicAuthorizationFailedError(),
                 errors.UnknownTopicOrPartitionError(), ValueError("bad record")):  # fmt: skip
        assert not is_connectivity(loud), loud


def test_the_outage_clock_and_its_back_off():
    clock = [100.0]
    outage = Outage((1.0, 8.0), clock=lambda: clock[0])
    outage.observe(False, "KafkaConnectionError")
    clock[0] = 130.0
    outage.observe(False)  # still away: the outage started at 100
    assert outage.seconds() == 30.0
    assert [outage.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    outage.observe(True)
    assert outage.since is None and outage.seconds() == 0.0 and outage.next_delay() == 1.0


def test_the_disconnected_gauge_reads_how_long_the_broker_has_been_away():
    registry = CollectorRegistry()
    since = {"at": None}
    registry.register(PipelineCollector(
        lambda: PipelineView(_stats(last_poll=1.0, disconnected_since=since["at"]))))  # fmt: skip
    assert registry.get_sample_value("streamer_kafka_disconnected_seconds") == 0.0
    since["at"] = 1.0  # long ago
    assert registry.get_sample_value("streamer_kafka_disconnected_seconds") > 1e9


def test_dead_letters_held_for_an_unreachable_broker_postpone_checkpoints_not_the_daemon(
    tmp_path, digit_stream
):
    records = _records(digit_stream[:32], partitions=1, bad={3: b"not json"})
    source = MemorySource(records, lambda raw: None)
    dead = MemoryDeadLetters(unreachable=True)
    run = Run(_settings(tmp_path), source, dead=dead)
    held = []

    def until(daemon) -> bool:
        if daemon.ledger.accounted < len(records):
            return False
        if not held:  # everything trained while the broker is away; nothing committed yet
            held.append((daemon.state, list(source.commits), list(dead.durable)))
            dead.unreachable = False  # the broker returns
        return bool(source.commits)

    run.until(until)
    assert held == [("running", [], [])]
    assert run.code == 0 and run.error is None
    assert [(r.offset, why) for r, why, _ in dead.durable] == [(3, "not_json")]
    assert source.commits[0][0] == {(TOPIC, 0): len(records)}  # after the dead letter only


class FlakyConsumer:
    """A consumer whose polls raise `errors` in turn, then return nothing, connected."""

    def __init__(self, source: KafkaSource, errors: list[Exception]) -> None:
        self.source, self.errors, self.seen_away = source, errors, []
        broker = SimpleNamespace(node_id=1)
        self._client = SimpleNamespace(cluster=SimpleNamespace(brokers=lambda: [broker]),
                                       connected=lambda node: True)  # fmt: skip

    def poll(self, **_: object) -> dict:
        self.seen_away.append(self.source.stats().disconnected_since is not None)
        if self.errors:
            raise self.errors.pop(0)
        return {}

    def assignment(self) -> set:
        return set()

    def paused(self) -> set:
        return set()


def _polling(errors: list[Exception]) -> tuple[KafkaSource, FlakyConsumer]:
    cfg = KafkaConfig(topic="pairs", poll_error_budget_seconds=0.05)
    source = KafkaSource(cfg, decode=lambda raw: None, backoff=(0.01, 0.02))
    consumer = FlakyConsumer(source, errors)
    source._connect = lambda: consumer  # the poll loop, without a broker
    source._threads[0].start()
    return source, consumer


def test_connection_errors_for_longer_than_the_poll_budget_are_waited_out():
    source, consumer = _polling([errors.KafkaConnectionError("refused")] * 20)  # >= 0.2 s
    try:
        _wait(lambda: not consumer.errors and consumer.seen_away[-1] is False)
        assert source.failure() is None
        assert any(consumer.seen_away)  # disconnected while they lasted, then connected
    finally:
        source.close()


def test_any_other_poll_error_repeating_past_the_budget_still_fails_naming_it():
    source, _ = _polling([errors.TopicAuthorizationFailedError("pairs")] * 10_000)
    try:
        _wait(lambda: source.failure() is not None)
        assert "polling has failed" in source.failure()
        assert "TopicAuthorizationFailedError" in source.failure()
    finally:
        source.close()


def _wait(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
