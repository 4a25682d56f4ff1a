"""The daemon against the real embedded broker: nothing lost, nothing trained twice."""

from __future__ import annotations

import base64
import json
import random
import signal
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from streamer.config import KafkaConfig
from streamer.dev.produce import publish
from streamer.state.checkpoint import complete_checkpoints

from .conftest import (
    ThreadedDaemon,
    accounted,
    committed_offsets,
    daemon_config,
    expected_digest,
    new_topic,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.slow


def _kafka(broker, topic: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)


def _latest_meta(config) -> dict | None:
    """Read-only: the newest checkpoint's meta.json, as an operator would look at it."""
    paths = complete_checkpoints(Path(config["checkpoint"]["dir"]))
    return json.loads((paths[-1] / "meta.json").read_text()) if paths else None


def test_every_record_is_trained_once_and_offsets_are_committed(broker, tmp_path, digit_stream):
    topic, samples = new_topic(), digit_stream[:300]
    ends = publish(_kafka(broker, topic), samples, partitions=3)
    # A decode pool of 3 whatever the cores: its hand-over order is what keeps offsets exact.
    config = daemon_config(tmp_path, broker.bootstrap, topic, records={"decode_workers": 3})
    with ThreadedDaemon(config) as daemon:
        wait_until(lambda: accounted(daemon) >= len(samples), 120, "all records")
    assert daemon.ledger.counts["trained"] + daemon.ledger.counts["probes"] == len(samples)
    assert daemon.ledger.counts["probes"] > 0 and daemon.ledger.counts["dead_lettered"] == 0
    assert daemon.ledger.digest == expected_digest(samples)  # each id exactly once
    meta = _latest_meta(config)
    assert meta["counts"]["trained"] + meta["counts"]["probes"] == len(samples)
    assert meta["offsets"] == {f"{t}:{p}": end for (t, p), end in ends.items()}
    committed = committed_offsets(broker.bootstrap, config["kafka"]["group_id"], list(ends))
    assert committed == ends


def test_sigkill_at_a_random_point_then_restart_counts_every_record_once(
    broker, tmp_path, digit_stream
):
    topic, samples = new_topic(), digit_stream[:400]
    ends = publish(_kafka(broker, topic), samples, partitions=2)
    config = daemon_config(
        tmp_path, broker.bootstrap, topic, learner={"batch_size": 8, "steps_per_batch": 3},
        records={"decode_workers": 3},
    )  # fmt: skip
    first = start_process(config, tmp_path, "first")
    wait_until(lambda: _latest_meta(config) is not None, 120, "a first checkpoint")
    time.sleep(random.Random().uniform(0.0, 2.0))  # a random point: mid-step or mid-write
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = start_process(config, tmp_path, "second")

    def all_in() -> bool:
        meta = _latest_meta(config)
        return bool(meta) and meta["counts"].get("trained", 0) + meta["counts"].get(
            "probes", 0
        ) >= len(samples)

    wait_until(all_in, 180, "every record in a checkpoint")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    meta = _latest_meta(config)
    assert meta["counts"]["trained"] + meta["counts"]["probes"] == len(samples)
    assert int(meta["digest"]) == expected_digest(samples)
    assert meta["offsets"] == {f"{t}:{p}": end for (t, p), end in ends.items()}


def test_sigterm_exits_cleanly_with_a_checkpoint_and_committed_offsets(
    broker, tmp_path, digit_stream
):
    topic = new_topic()
    publish(_kafka(broker, topic), digit_stream[:2000] * 1, partitions=1)
    config = daemon_config(
        tmp_path, broker.bootstrap, topic,
        checkpoint={"every_steps": 1000, "every_seconds": 1000},
        daemon={"grace_seconds": 20},
    )  # fmt: skip
    process = start_process(config, tmp_path, "daemon")
    wait_until(lambda: "partitions assigned" in (tmp_path / "daemon.log").read_text(), 120, "join")
    time.sleep(2)  # mid-stream: training is under way
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 20
    meta = _latest_meta(config)
    assert meta is not None and meta["counts"]["trained"] > 0
    committed = committed_offsets(broker.bootstrap, config["kafka"]["group_id"], [(topic, 0)])
    assert committed[(topic, 0)] == meta["offsets"][f"{topic}:0"]


def _malformed(image_root) -> list[tuple[bytes, str]]:
    png = base64.b64encode((image_root / "ok.png").read_bytes()).decode()
    huge = base64.b64encode((image_root / "huge.png").read_bytes()).decode()
    truncated = base64.b64encode((image_root / "ok.png").read_bytes()[:60]).decode()

    def value(**fields) -> bytes:
        return json.dumps(fields).encode()

    return [
        (value(text="bad", image="!!not base64!!"), "bad_base64"),
        (value(text="cut", image=truncated), "corrupt_image"),
        (value(text="txt", image=base64.b64encode(b"plain words, no pixels").decode()),
         "not_an_image"),
        (value(text="bomb", image=huge), "too_many_pixels"),
        (value(text="   ", image=png), "empty_text"),
        (value(image=png), "missing_field"),
        (value(text=42, image=png), "invalid_field"),
        (value(text="two", image=png, image_uri="file:///etc/passwd"), "image_choice"),
        (value(text="escape", image_uri="file:///etc/passwd"), "uri_outside_root"),
        (value(text="dots", image_uri=f"file://{image_root}/../../etc/hosts"), "uri_outside_root"),
        (b"\xff\xfe not json", "not_json"),
        (b"[1, 2, 3]", "not_json_object"),
    ]  # fmt: skip


def test_malformed_records_go_to_the_dead_letter_topic_with_their_reason(
    broker, tmp_path, digit_stream
):
    from tests.test_decode import _png_claiming

    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(digit_stream[0].image)
    (root / "huge.png").write_bytes(_png_claiming(20_000, 20_000))
    topic, valid = new_topic(), digit_stream[:60]
    publish(_kafka(broker, topic), valid, partitions=1)
    bad = _malformed(root)
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
    for value, _ in bad:
        producer.send(topic, value=value)
    uri_record = {"text": "a photo of a zero.", "image_uri": f"file://{root}/ok.png", "id": "uri"}
    producer.send(topic, value=json.dumps(uri_record).encode())
    producer.flush()
    config = daemon_config(tmp_path, broker.bootstrap, topic, records={"image_root": str(root)})
    total = len(valid) + len(bad) + 1
    with ThreadedDaemon(config) as daemon:
        wait_until(lambda: accounted(daemon) >= total, 120, "all records")
        wait_until(
            lambda: daemon.persistence.last is not None and not daemon.ledger.dirty, 30, "ckpt"
        )
    assert daemon.ledger.counts["trained"] + daemon.ledger.counts["probes"] == len(valid) + 1
    dlq = KafkaConsumer(f"{topic}.dlq", bootstrap_servers=[broker.bootstrap],
                        auto_offset_reset="earliest", consumer_timeout_ms=5000)  # fmt: skip
    letters = [dict(r.headers) for r in dlq]
    dlq.close()
    by_offset = {int(h["streamer.source.offset"]): h["streamer.reason"].decode() for h in letters}
    assert by_offset == {len(valid) + i: reason for i, (_, reason) in enumerate(bad)}
    assert {h["streamer.source.topic"].decode() for h in letters} == {topic}
    assert {h["streamer.source.partition"] for h in letters} == {b"0"}
    assert all("streamer.detail" in h for h in letters)


def test_a_flood_of_invalid_records_stops_the_daemon_without_committing(broker, tmp_path):
    topic = new_topic()
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
    for i in range(40):
        producer.send(topic, value=b"garbage %d" % i)
    producer.flush()
    config = daemon_config(
        tmp_path, broker.bootstrap, topic, dead_letter={"window": 20, "max_share": 0.5}
    )
    runner = ThreadedDaemon(config)
    with runner:
        runner.join(timeout=120)
    assert runner.exit_code == 1 and runner.daemon.state == "failed"
    meta = _latest_meta(config)  # a checkpoint may precede the flood's detection...
    checkpointed = meta["offsets"].get(f"{topic}:0") if meta else None
    committed = committed_offsets(broker.bootstrap, config["kafka"]["group_id"], [(topic, 0)])
    assert committed[(topic, 0)] == checkpointed  # ...but nothing past it is committed
    assert checkpointed is None or checkpointed < 40


def test_a_flood_of_malformed_records_logs_a_bounded_number_of_lines(broker, tmp_path):
    import io

    from streamer import logs

    topic = new_topic()
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap], linger_ms=20)
    for i in range(10_000):
        producer.send(topic, value=b"not json %d" % i)
    producer.flush()
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    config = daemon_config(tmp_path, broker.bootstrap, topic, dead_letter={"max_share": 1.0})
    with ThreadedDaemon(config) as daemon:
        wait_until(lambda: accounted(daemon) >= 10_000, 180, "all records")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    refused = [line for line in lines if line["event"] == "record refused"]
    assert daemon.ledger.counts["dead_lettered"] == 10_000
    assert 1 <= len(refused) <= 10  # one per interval, not one per record
    samples = [line for line in refused if "offset" in line]  # the rest are closing counts
    assert sum(line["suppressed_since_last"] for line in refused) + len(samples) == 10_000
