"""Images by reference: image_uri records fetched from a real local HTTP server and fsspec's
memory filesystem, through the real decoder; every failure is a refusal with its reason,
bounded in time and bytes."""

from __future__ import annotations

import importlib.util
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import fsspec
import pytest
import torch
from pydantic import ValidationError

from streamer.config import ModelConfig, RecordConfig
from streamer.intake.decode import Decoder
from streamer.intake.fetch import Fetcher
from streamer.learning.model import ClipModel
from streamer.records import DecodeError, RawRecord

LIMIT = 2_000_000  # records.max_image_bytes in these tests


def _skimage_file(name: str) -> bytes:
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.origin is not None, "scikit-image's photos are needed"
    return (Path(spec.origin).parent / "data" / name).read_bytes()


JPEG, PNG = _skimage_file("rocket.jpg"), _skimage_file("astronaut.png")


class Images(BaseHTTPRequestHandler):
    """Routes of a small image server; `release` lets the slow ones finish."""

    release = threading.Event()
    sent: ClassVar[dict[str, int]] = {}
    pair = threading.Barrier(2, timeout=10)  # /paired answers two requests at a time
    lock = threading.Lock()
    inflight: ClassVar[dict[str, int]] = {"now": 0, "most": 0}

    def do_GET(self) -> None:
        route = self.path.split("?")[0]
        if route == "/rocket.jpg":
            self._reply(200, "image/jpeg", JPEG)
        elif route == "/astronaut.png":
            self._reply(200, "image/png; charset=binary", PNG)
        elif route == "/page":
            self._reply(200, "text/html", b"<html>an error page served as 200</html>")
        elif route == "/declared-huge":
            self._reply(200, "image/jpeg", JPEG, length=LIMIT * 10)
        elif route == "/endless":
            self._endless()
        elif route == "/slow":
            self.release.wait(60)  # no answer until the test is over
            self._reply(200, "image/jpeg", JPEG)
        elif route == "/trickle":
            self._trickle()
        elif route == "/paired":
            self._paired()
        elif route == "/here":
            self._redirect("/astronaut.png")
        elif route == "/away":
            self._redirect("http://elsewhere.invalid/astronaut.png")
        else:
            self._reply(404, "text/plain", b"not found")

    def _reply(self, status: int, kind: str, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length or len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless(self) -> None:
        """No length declared, bytes without end: the client must stop reading."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        self.sent["endless"] = 0
        try:
            while self.sent["endless"] < 200 * LIMIT:
                self.wfile.write(JPEG)
                self.sent["endless"] += len(JPEG)
        except OSError:  # the client hung up
            pass

    def _trickle(self) -> None:
        """A byte at a time, each well within any per-read timeout, never finishing."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        try:
            for byte in JPEG:
                if self.release.wait(0.05):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            pass

    def _paired(self) -> None:
        with self.lock:
            self.inflight["now"] += 1
            self.inflight["most"] = max(self.inflight["most"], self.inflight["now"])
        self.pair.wait()  # holds this request until a second one is in flight
        with self.lock:
            self.inflight["now"] -= 1
        self._reply(200, "image/png", PNG)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Images.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def pixels():
    return ClipModel(ModelConfig(arch="streamer-tiny"), torch.device("cpu"), seed=0).pixels


def _cfg(*allow: str, timeout: float = 0.5, concurrent: int = 8, **fields) -> RecordConfig:
    fetch = {"allow": allow, "timeout_seconds": timeout, "max_concurrent": concurrent}
    return RecordConfig(**{"max_image_bytes": LIMIT, **fields}, fetch=fetch)


def _record(uri: str) -> RawRecord:
    value = json.dumps({"text": "a photo", "image_uri": uri}).encode()
    return RawRecord("pairs", 0, 7, value, None, (), 1_700_000_000_000)


def _reason(decoder: Decoder, uri: str) -> str:
    with pytest.raises(DecodeError) as refused:
        decoder.decode(_record(uri))
    return refused.value.reason


def test_a_referenced_jpeg_and_png_decode_like_inline_ones(server, pixels):
    decoder = Decoder("json", _cfg(server), pixels)
    for path in ("/rocket.jpg", "/astronaut.png", "/here"):  # /here redirects to the PNG
        pair = decoder.decode(_record(server + path))
        assert pair.pixels.shape == (3, 32, 32) and torch.isfinite(pair.pixels).all()
    assert decoder.decode(_record(server + "/astronaut.png")).sample.image == PNG


def test_every_failed_fetch_is_refused_with_its_reason(server, pixels):
    decoder = Decoder("json", _cfg(server), pixels)
    assert _reason(decoder, server + "/nothing-here.jpg") == "uri_not_found"
    assert _reason(decoder, server + "/page") == "uri_content_type"
    assert _reason(decoder, server + "/declared-huge") == "image_too_large"
    assert _reason(decoder, server + "/away") == "uri_host_not_allowed"


def test_an_endless_body_is_cut_off_just_past_the_size_limit(server, pixels):
    decoder = Decoder("json", _cfg(server, timeout=30), pixels)
    assert _reason(decoder, server + "/endless") == "image_too_large"
    Images.release.wait(0.5)  # the server notices the hang-up on its next writes
    assert Images.sent["endless"] < 200 * LIMIT  # it was stopped, not read to the end


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_a_fetch_slower_than_the_timeout_is_given_up(server, pixels, path):
    # /slow never answers and /trickle never finishes before the test ends: a fetch that
    # returned at all was ended by its own deadline (per read, /trickle is never idle long).
    decoder = Decoder("json", _cfg(server, timeout=0.5), pixels)
    assert _reason(decoder, server + path) == "uri_timeout"


def test_no_more_fetches_than_allowed_are_in_flight_at_once(server):
    fetcher = Fetcher(_cfg(server, timeout=30, concurrent=2))
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(fetcher(server + "/paired")))
               for _ in range(6)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [PNG] * 6
    assert Images.inflight["most"] == 2  # pairs met (the barrier), never a third at once


def test_nothing_remote_is_read_unless_its_origin_is_allowed(server, pixels):
    assert _reason(Decoder("json", _cfg(), pixels), server + "/rocket.jpg") == "uri_scheme"
    other = Decoder("json", _cfg("http://127.0.0.1:1"), pixels)
    assert _reason(other, server + "/rocket.jpg") == "uri_host_not_allowed"
    https = Decoder("json", _cfg("https://images.example.com"), pixels)
    assert _reason(https, server + "/rocket.jpg") == "uri_scheme"  # http is not https
    wildcard = Fetcher(_cfg("https://*.example.com"))
    assert _allowed(wildcard, "https://cdn.images.example.com/a.jpg")
    assert not _allowed(wildcard, "https://example.com.evil.test/a.jpg")
    assert not _allowed(wildcard, "https://cdn.example.com:8443/a.jpg")  # another port


def _allowed(fetcher: Fetcher, uri: str) -> bool:
    from urllib.parse import urlsplit

    try:
        fetcher.check(urlsplit(uri))
    except DecodeError:
        return False
    return True


def test_fsspec_memory_filesystem_serves_references_within_the_same_limits(pixels):
    bucket = f"b{uuid.uuid4().hex[:8]}"
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/{bucket}/rocket.jpg", JPEG)
    memory.pipe(f"/{bucket}/big.png", PNG)
    decoder = Decoder("json", _cfg(f"memory://{bucket}"), pixels)
    assert decoder.decode(_record(f"memory://{bucket}/rocket.jpg")).sample.image == JPEG
    assert _reason(decoder, f"memory://{bucket}/gone.jpg") == "uri_not_found"
    assert _reason(decoder, f"memory://other{bucket}/rocket.jpg") == "uri_host_not_allowed"
    small = Decoder("json", _cfg(f"memory://{bucket}", max_image_bytes=len(JPEG)), pixels)
    assert _reason(small, f"memory://{bucket}/big.png") == "image_too_large"


def test_file_uris_still_read_under_the_image_root_only(tmp_path, pixels):
    (tmp_path / "rocket.jpg").write_bytes(JPEG)
    decoder = Decoder("json", _cfg(image_root=tmp_path), pixels)
    assert decoder.decode(_record(f"file://{tmp_path}/rocket.jpg")).sample.image == JPEG
    assert _reason(decoder, "file:///etc/hostname") == "uri_outside_root"


def test_the_allow_list_takes_origins_only_and_names_a_missing_back_end():
    for bad in ("ftp://host", "https://host/path", "https://user@host", "s3://"):
        with pytest.raises(ValidationError, match="allow"):
            _cfg(bad)
    if importlib.util.find_spec("s3fs") is None:
        with pytest.raises(ValidationError, match="s3fs"):
            _cfg("s3://bucket")


def test_a_fetcher_travels_to_a_decode_process_as_its_config():
    import pickle

    cfg = RecordConfig(fetch={"allow": ["https://images.example.com"], "max_concurrent": 3})
    travelled = pickle.loads(pickle.dumps(Fetcher(cfg)))  # what a worker process receives
    assert travelled.cfg == cfg
    assert travelled._slots.acquire(blocking=False)  # slots of its own, made there
