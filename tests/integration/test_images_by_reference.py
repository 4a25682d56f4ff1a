"""Records that carry an image_uri into a real image server, through the whole daemon on the
real broker: the images are fetched in the decode stage and trained; a missing one and one
slower than the timeout are dead-lettered with their reason, and the partition goes on."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kafka import KafkaConsumer, KafkaProducer

from streamer.config import KafkaConfig
from streamer.dev.produce import ensure_topic

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


@pytest.fixture
def image_server(digit_stream) -> Iterator[str]:
    images = {f"/{s.id}.png": s.image for s in digit_stream[:60]}
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/slow.png":
                release.wait(60)  # answers only once the test is over
            body = images.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/png" if body else "text/plain")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    release.set()
    httpd.shutdown()
    httpd.server_close()


def test_referenced_images_are_fetched_and_trained_and_failed_fetches_dead_lettered(
    broker, tmp_path, digit_stream, image_server
):
    topic, samples = new_topic(), digit_stream[:60]
    records = [{"text": s.text, "label": s.label, "id": s.id,
                "image_uri": f"{image_server}/{s.id}.png"} for s in samples]  # fmt: skip
    records.insert(20, {"text": "a photo of a 1.", "image_uri": f"{image_server}/gone.png"})
    records.insert(40, {"text": "a photo of a 2.", "image_uri": f"{image_server}/slow.png"})
    ensure_topic(KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic), partitions=1)
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
    for record in records:
        producer.send(topic, value=json.dumps(record).encode())
    producer.flush()
    producer.close()
    fetch = {"allow": [image_server], "timeout_seconds": 1.0}
    config = daemon_config(tmp_path, broker.bootstrap, topic, records={"fetch": fetch})
    with ThreadedDaemon(config) as daemon:
        wait_until(lambda: accounted(daemon) >= len(records), 120, "all records")
        wait_until(lambda: not daemon.ledger.dirty, 30, "a checkpoint")
    assert daemon.ledger.counts["trained"] + daemon.ledger.counts["probes"] == len(samples)
    assert daemon.ledger.digest == expected_digest(samples)
    dlq = KafkaConsumer(f"{topic}.dlq", bootstrap_servers=[broker.bootstrap],
                        auto_offset_reset="earliest", consumer_timeout_ms=5000)  # fmt: skip
    letters = {int(dict(r.headers)["streamer.source.offset"]):
               dict(r.headers)["streamer.reason"].decode() for r in dlq}  # fmt: skip
    dlq.close()
    assert letters == {20: "uri_not_found", 40: "uri_timeout"}
    group = config["kafka"]["group_id"]
    assert committed_offsets(broker.bootstrap, group, [(topic, 0)]) == {(topic, 0): len(records)}
