"""Broker outages longer than the old poll-error budget, on the real broker: the daemon stays
up (live, not ready, counting the outage), never exits, and trains every record once."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from streamer.config import KafkaConfig
from streamer.dev.broker import EmbeddedBroker, free_port
from streamer.dev.produce import publish
from streamer.intake.sink import DeadLettersPending, KafkaDeadLetters
from streamer.records import RawRecord

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
BUDGET = 3.0  # kafka.poll_error_budget_seconds: before, an outage this long was fatal
DOWN = 3 * BUDGET + 1


def _get(port: int, path: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _disconnected(port: int) -> float:
    _, body = _get(port, "/metrics")
    line = next(x for x in body.splitlines() if x.startswith("streamer_kafka_disconnected_"))
    return float(line.split()[-1])


def _ride_out(runner: ThreadedDaemon, port: int, stop_outage) -> None:
    """The outage: not ready, live and counting it the whole time, never exiting."""
    started = time.monotonic()
    stop_outage()
    wait_until(lambda: _get(port, "/readyz")[0] == 503, 30, "not ready")
    assert "no broker reachable" in _get(port, "/readyz")[1]
    while time.monotonic() - started < DOWN:
        assert _get(port, "/healthz") == (200, "ok\n")
        assert runner.exit_code is None and runner.daemon.state == "running"
        time.sleep(0.5)
    assert _disconnected(port) >= BUDGET


def _config(tmp_path, broker: EmbeddedBroker, topic: str) -> dict:
    return daemon_config(tmp_path, broker.bootstrap, topic,
                         kafka={"poll_error_budget_seconds": BUDGET})  # fmt: skip


def _settled(daemon, records: int, ends: dict | None = None) -> None:
    """`records` accounted for and their offsets committed (`ends`, when known)."""
    wait_until(lambda: accounted(daemon) >= records, 120, f"{records} records")
    done = (lambda: daemon.ledger.committed == ends) if ends else lambda: daemon.ledger.committed
    wait_until(lambda: done() and not daemon.ledger.dirty, 30, "their commit")


def _trained_once(runner, daemon, broker, config, samples, ends) -> None:
    assert runner.exit_code == 0
    assert daemon.ledger.counts["trained"] + daemon.ledger.counts["probes"] == len(samples)
    assert daemon.ledger.digest == expected_digest(samples)
    assert committed_offsets(broker.bootstrap, config["kafka"]["group_id"], list(ends)) == ends


def test_a_broker_stopped_longer_than_the_old_budget_is_waited_for_and_nothing_trained_twice(
    tmp_path, digit_stream
):
    """Tansu keeps nothing when it stops: the topic comes back empty, so the records sent
    after the restart (offsets from 0 again) must be trained, and the ones before not again."""
    port = free_port()
    broker = EmbeddedBroker(port, log_path=tmp_path / "tansu.log").start()
    topic = new_topic()
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
    before, after = digit_stream[:100], digit_stream[100:160]
    publish(kafka, before)
    config = _config(tmp_path, broker, topic)
    runner = ThreadedDaemon(config)
    try:
        with runner as daemon:
            _settled(daemon, len(before))
            _ride_out(runner, daemon.metrics_port, broker.stop)
            broker = EmbeddedBroker(port, log_path=tmp_path / "tansu.log").start()
            ends = publish(kafka, after)
            wait_until(lambda: accounted(daemon) >= len(before) + len(after), 120, "after")
            wait_until(lambda: _get(daemon.metrics_port, "/readyz")[0] == 200, 30, "ready")
            assert _disconnected(daemon.metrics_port) == 0
            _settled(daemon, len(before) + len(after), ends)
        _trained_once(runner, daemon, broker, config, before + after, ends)
    finally:
        broker.stop()


class Cable:
    """A TCP forwarder standing for the network between daemon and broker: `cut()` drops
    every connection and refuses new ones (as a stopped broker would) while the broker and
    its data live on; `mend()` listens again on the same address."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen, self.upstream = listen, upstream
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []

    def mend(self) -> Cable:
        self._server = socket.create_server(self.listen, reuse_port=False)
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()
        return self

    def cut(self) -> None:
        for sock in (self._server, *self._open):  # shutdown wakes a thread blocked on it
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open = []

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:  # cut
                return
            broker = socket.create_connection(self.upstream)
            self._open += [client, broker]
            for a, b in ((client, broker), (broker, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def test_after_a_network_outage_every_partition_resumes_from_the_checkpoint_offsets(
    tmp_path, digit_stream
):
    """The broker keeps its log and the group's commits (as a real one does through a
    maintenance window): the daemon goes on where its checkpoint left off, so the records
    before the outage are not read again and the ones after are all trained and committed.
    (Tansu keeps the member in its group through the outage: no new assignment here; the
    positioning on one is covered by the restart tests.)"""
    port = free_port()  # the broker on 127.0.0.1, advertised (and reached) via 127.0.0.2
    broker = EmbeddedBroker(port, log_path=tmp_path / "tansu.log", advertise="127.0.0.2")
    cable = Cable(("127.0.0.2", port), ("127.0.0.1", port))
    broker.start()
    cable.mend()
    topic = new_topic()
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
    before, after = digit_stream[:120], digit_stream[120:200]
    publish(kafka, before, partitions=2)
    config = _config(tmp_path, broker, topic)
    runner = ThreadedDaemon(config)
    try:
        with runner as daemon:
            _settled(daemon, len(before))
            _ride_out(runner, daemon.metrics_port, cable.cut)
            cable.mend()
            ends = publish(kafka, after, partitions=2)  # offsets go on from the old log ends
            _settled(daemon, len(before) + len(after), ends)
            assert _get(daemon.metrics_port, "/readyz")[0] == 200
        _trained_once(runner, daemon, broker, config, before + after, ends)  # none read twice
    finally:
        cable.cut()
        broker.stop()


def test_dead_letters_for_an_unreachable_broker_are_held_then_delivered(tmp_path):
    port = free_port()
    broker = EmbeddedBroker(port, log_path=tmp_path / "tansu.log")
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=new_topic())
    sink = KafkaDeadLetters(kafka, timeout=1.0)
    bad = RawRecord(kafka.topic, 0, 5, b"not json", None, (), 0)
    sink.send(bad, "not_json", "Expecting value")  # no broker yet: held, never raised
    with pytest.raises(DeadLettersPending):
        sink.flush()
    broker.start()
    try:
        wait_until(lambda: _flushed(sink), 60, "the held dead letter to be delivered")
        assert sink.sent == 1
    finally:
        sink.close()
        broker.stop()


def _flushed(sink: KafkaDeadLetters) -> bool:
    try:
        sink.flush()
    except DeadLettersPending:
        return False
    return True
