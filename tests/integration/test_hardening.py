"""No record, codec or dying thread stops the daemon: the real broker, the real process."""

from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from streamer.config import KafkaConfig
from streamer.dev.broker import free_port
from streamer.dev.produce import ensure_topic, publish
from streamer.intake import codec
from streamer.state.checkpoint import complete_checkpoints

from .conftest import (
    committed_offsets,
    daemon_config,
    expected_digest,
    new_topic,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def spawn():
    """start_process, and a kill at teardown of any the test left running (a failure)."""
    started = []

    def start(*args):
        started.append(start_process(*args))
        return started[-1]

    start.started = started  # for processes started otherwise
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _latest_meta(config: dict) -> dict | None:
    paths = complete_checkpoints(Path(config["checkpoint"]["dir"]))
    return json.loads((paths[-1] / "meta.json").read_text()) if paths else None


def _counted(meta: dict | None) -> int:
    counts = meta["counts"] if meta else {}
    return sum(counts.get(k, 0) for k in ("trained", "probes", "dead_lettered"))


def _poison(png: str) -> list[tuple[bytes, str]]:
    deep = b'{"text": "deep", "image": "' + png.encode() + b'", "x": '
    deep += b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        (deep, "json_too_deep"),
        (b'{"text": "nan", "image": "' + png.encode() + b'", "ts": NaN}',
         "event_time_out_of_range"),
        (json.dumps({"text": "old", "image": png, "ts": -1e300}).encode(),
         "event_time_out_of_range"),
        (b"", "empty_value"),
        (random.Random(13).randbytes(64), "not_json"),
    ]  # fmt: skip


def _dead_letters(bootstrap: str, topic: str) -> list[dict]:
    dlq = KafkaConsumer(f"{topic}.dlq", bootstrap_servers=[bootstrap],
                        auto_offset_reset="earliest", consumer_timeout_ms=5000)  # fmt: skip
    letters = [dict(r.headers) for r in dlq]
    dlq.close()
    return letters


def _stop(process, timeout: float = 60) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


def test_poison_records_among_valid_ones_are_dead_lettered_and_the_rest_trained(
    broker, tmp_path, digit_stream, spawn
):
    topic, valid = new_topic(), digit_stream[:40]
    bad = _poison(base64.b64encode(valid[0].image).decode())
    ensure_topic(KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), 1)
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
    offsets, i = {}, 0
    for n, sample in enumerate(valid):
        producer.send(topic, value=codec.encode_json(sample), key=sample.id.encode())
        if n % 8 == 3 and i < len(bad):  # a poison record every few valid ones
            offsets[n + 1 + i] = bad[i][1]
            producer.send(topic, value=bad[i][0])
            i += 1
    producer.flush()
    config = daemon_config(tmp_path, broker.bootstrap, topic)
    process = spawn(config, tmp_path, "daemon")
    total = len(valid) + len(bad)
    wait_until(lambda: _counted(_latest_meta(config)) >= total, 120, "every record counted")
    assert _stop(process) == 0
    meta = _latest_meta(config)
    counts = meta["counts"]
    assert counts["trained"] + counts["probes"] == len(valid)  # each valid record once
    assert int(meta["digest"]) == expected_digest(valid)
    assert counts["dead_lettered"] == len(bad)
    assert counts["invalid:event_time_out_of_range"] == 2
    by_offset = {int(h["streamer.source.offset"]): h["streamer.reason"].decode()
                 for h in _dead_letters(broker.bootstrap, topic)}  # fmt: skip
    assert by_offset == offsets


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
def test_a_compressed_topic_is_trained_in_full(broker, tmp_path, digit_stream, spawn, compression):
    topic, samples = new_topic(), digit_stream[:48]
    ensure_topic(KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), 1)
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], compression_type=compression,
                             linger_ms=50)  # fmt: skip
    for sample in samples:
        producer.send(topic, value=codec.encode_json(sample), key=sample.id.encode())
    producer.flush()
    producer.close()
    config = daemon_config(tmp_path, broker.bootstrap, topic)
    process = spawn(config, tmp_path, "daemon")
    wait_until(lambda: _counted(_latest_meta(config)) >= len(samples), 120, "every record")
    assert _stop(process) == 0
    meta = _latest_meta(config)
    assert meta["counts"]["trained"] + meta["counts"]["probes"] == len(samples)
    assert meta["counts"].get("dead_lettered", 0) == 0
    assert int(meta["digest"]) == expected_digest(samples)


# The real daemon, with one fault injected: the decode thread dies (a BaseException, raised
# outside the per-record guard) at the record given; decoding is slowed so that training
# and checkpoints run meanwhile. The health server stays up 3 s longer so /healthz is seen.
LAUNCHER = textwrap.dedent(
    """
    import sys, time
    from streamer import cli
    from streamer.service import health
    from streamer.intake import kafka_source

    class WorkerKilled(BaseException):
        pass

    die_at, seen, real = int(sys.argv[1]), [0], kafka_source.to_item

    def to_item(raw, decode):
        seen[0] += 1
        if seen[0] == die_at:
            raise WorkerKilled("injected by the test")
        time.sleep(0.03)
        return real(raw, decode)

    kafka_source.to_item = to_item
    stop = health.HealthServer.stop
    health.HealthServer.stop = lambda self: (time.sleep(3), stop(self))
    sys.exit(cli.main(sys.argv[2:]))
    """
)


def _health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def test_a_dying_worker_thread_fails_the_daemon_and_commits_nothing_past_its_checkpoint(
    broker, tmp_path, digit_stream, spawn
):
    topic, samples = new_topic(), digit_stream[:200]
    ends = publish(KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), samples)
    port = free_port()
    config = daemon_config(tmp_path, broker.bootstrap, topic, metrics={"port": port})
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    (tmp_path / "daemon.yaml").write_text(json.dumps(config))
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(launcher), "150", "run", "--config", str(tmp_path / "daemon.yaml")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    spawn.started.append(process)
    seen: list[tuple[int, str]] = []

    def reported() -> bool:
        seen.append(_health(port))
        return seen[-1][0] == 503

    wait_until(reported, 120, "/healthz to report the failure")
    died = time.monotonic()
    assert "decode thread died" in seen[-1][1] and "WorkerKilled" in seen[-1][1]
    assert process.wait(timeout=30) == 1  # non-zero, quickly
    assert time.monotonic() - died < 15
    text = (tmp_path / "daemon.log").read_text()
    assert "worker thread died" in text and "stopping without committing" in text
    meta = _latest_meta(config)
    assert meta is not None, "a checkpoint before the fault"
    checkpointed = meta["offsets"][f"{topic}:0"]
    assert checkpointed < 150  # the fault came before the checkpoint caught up
    committed = committed_offsets(broker.bootstrap, config["kafka"]["group_id"], list(ends))
    assert committed[(topic, 0)] == checkpointed  # nothing past the checkpoint
    # A restart, fault-free, trains the rest: every record counted once.
    second = spawn(config, tmp_path, "second")
    wait_until(lambda: _counted(_latest_meta(config)) >= len(samples), 120, "every record")
    assert _stop(second) == 0
    meta = _latest_meta(config)
    assert meta["counts"]["trained"] + meta["counts"]["probes"] == len(samples)
    assert int(meta["digest"]) == expected_digest(samples)
