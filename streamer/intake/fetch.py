"""Images by reference: an `image_uri` read in the decode stage, within limits.

file:// is read under `records.image_root`. A remote origin must be on `records.fetch.allow`
(scheme and host). Every fetch is bounded three ways:
- in bytes: `records.max_image_bytes`, and reading stops past it;
- in time: `records.fetch.timeout_seconds` for the whole fetch (connect, wait, read);
- in concurrency: `records.fetch.max_concurrent` over all decode threads.
http(s) is read with the standard library: the content type is checked, a redirect is
followed only to an allowed origin, and no proxy is used. s3://, gs:// and memory:// go
through fsspec, which imports its back-end (s3fs, gcsfs) only when a record names that scheme.
Every failure is a DecodeError with a reason of codec.REASONS, so the record is dead-lettered
and its partition goes on.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from streamer.config import RecordConfig
from streamer.records import DecodeError

CHUNK = 1 << 16
REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}


class Fetcher:
    """`fetch(uri) -> bytes`, safe to call from every decode thread at once."""

    def __init__(self, cfg: RecordConfig) -> None:
        self.cfg = cfg
        self._slots = threading.BoundedSemaphore(cfg.fetch.max_concurrent)
        self._tls = ssl.create_default_context()

    def __reduce__(self):
        """To a decode worker process as its config: its slots and TLS context are made
        there (`max_concurrent` then bounds each worker process)."""
        return (Fetcher, (self.cfg,))

    def __call__(self, uri: str) -> bytes:
        url = urlsplit(uri)
        if url.scheme == "file":
            return read_file(url, self.cfg)
        self.check(url)
        timeout = self.cfg.fetch.timeout_seconds
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            raise DecodeError("uri_timeout", f"no fetch slot free within {timeout:g} s")
        if url.scheme in ("http", "https"):
            try:
                return self._http(url, deadline)
            finally:
                self._slots.release()
        return self._in_thread(uri, deadline)  # the thread releases the slot when it ends

    def check(self, url: SplitResult) -> None:
        """Refuse an origin not on the allow-list (uri_scheme, uri_host_not_allowed)."""
        try:
            url.port  # noqa: B018  # raises on a port that is not a number
        except ValueError as exc:
            raise DecodeError("invalid_field", f"image_uri: {exc}"[:200]) from exc
        origins = [urlsplit(entry) for entry in self.cfg.fetch.allow]
        if not any(o.scheme == url.scheme for o in origins):
            raise DecodeError("uri_scheme", f"{url.scheme}:// is not in records.fetch.allow")
        if not any(_matches(o, url) for o in origins):
            raise DecodeError("uri_host_not_allowed", f"{url.scheme}://{url.netloc}"[:200])

    # -- http(s): the standard library, a watchdog closing the socket at the deadline --------
    def _http(self, url: SplitResult, deadline: float) -> bytes:
        for _ in range(REDIRECTS + 1):
            conn = self._connection(url, deadline)
            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort)
            watchdog.daemon = True
            try:
                conn.connect()  # bounded by the connection's timeout
                watchdog.args = [conn.sock]  # the response keeps it after conn lets go
                watchdog.start()
                location = self._get(conn, url, deadline)
            except DecodeError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
                    raise DecodeError("uri_timeout", _past(self.cfg)) from exc
                raise DecodeError("uri_unreadable", f"{type(exc).__name__}: {exc}"[:200]) from exc
            finally:
                watchdog.cancel()
                conn.close()
            if isinstance(location, bytes):
                return location
            url = urlsplit(urljoin(url.geturl(), location))
            self.check(url)  # a redirect leaves the allow-list only to be refused
        raise DecodeError("uri_unreadable", f"more than {REDIRECTS} redirects")

    def _connection(self, url: SplitResult, deadline: float) -> http.client.HTTPConnection:
        timeout = max(0.001, deadline - time.monotonic())
        if url.scheme == "https":
            return http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout,
                                               context=self._tls)  # fmt: skip
        return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)

    def _get(self, conn: http.client.HTTPConnection, url: SplitResult, deadline: float):
        """The body (bytes), or where a redirect points (str)."""
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        conn.request("GET", target, headers={"Accept": ", ".join(self.cfg.fetch.content_types),
                                             "User-Agent": "streamer"})  # fmt: skip
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            return response.getheader("Location")
        if response.status in (404, 410):
            raise DecodeError("uri_not_found", f"HTTP {response.status}")
        if response.status != 200:
            raise DecodeError("uri_unreadable", f"HTTP {response.status} {response.reason}"[:200])
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if kind not in self.cfg.fetch.content_types:
            raise DecodeError("uri_content_type", f"Content-Type {kind or 'missing'}"[:200])
        return self._body(response, response.getheader("Content-Length"), deadline)

    def _body(self, stream, declared: str | None, deadline: float) -> bytes:
        """Read at most max_image_bytes + 1 (more: refused without reading on)."""
        limit = self.cfg.max_image_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise DecodeError("image_too_large", f"{declared} bytes > {limit}")
        chunks, size = [], 0
        while chunk := stream.read(min(CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise DecodeError("image_too_large", f"more than {limit} bytes")
            if time.monotonic() >= deadline:
                raise DecodeError("uri_timeout", _past(self.cfg))
        if time.monotonic() >= deadline:  # the watchdog cut the body short
            raise DecodeError("uri_timeout", _past(self.cfg))
        return b"".join(chunks)

    # -- fsspec: on a thread of its own, waited for until the deadline ---------------------
    def _in_thread(self, uri: str, deadline: float) -> bytes:
        result: dict[str, bytes | BaseException] = {}
        done = threading.Event()

        def run() -> None:
            try:
                result["out"] = self._fsspec(uri, deadline)
            except BaseException as exc:  # handed to the waiting decode thread
                result["out"] = exc
            finally:
                self._slots.release()  # a stuck back-end keeps its slot: concurrency holds
                done.set()

        threading.Thread(target=run, name="image-fetch", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise DecodeError("uri_timeout", _past(self.cfg))
        out = result["out"]
        if isinstance(out, BaseException):
            raise out
        return out

    def _fsspec(self, uri: str, deadline: float) -> bytes:
        import fsspec

        try:
            with fsspec.open(uri, "rb") as stream:
                size = getattr(stream, "size", None)
                return self._body(stream, str(size) if size is not None else None, deadline)
        except DecodeError:
            raise
        except FileNotFoundError as exc:
            raise DecodeError("uri_not_found", str(exc)[:200]) from exc
        except Exception as exc:  # back-ends raise their own kinds (botocore, aiohttp ...)
            raise DecodeError("uri_unreadable", f"{type(exc).__name__}: {exc}"[:200]) from exc


def read_file(url: SplitResult, cfg: RecordConfig) -> bytes:
    """A file:// image, which must lie under records.image_root."""
    if url.netloc not in ("", "localhost"):
        raise DecodeError("uri_scheme", "file:// names no host but localhost")
    if cfg.image_root is None:
        raise DecodeError("uri_outside_root", "no records.image_root is configured")
    root = cfg.image_root.resolve()
    try:
        path = Path(unquote(url.path)).resolve()  # resolves .. and symlinks before the check
    except (OSError, ValueError) as exc:  # NUL bytes, symlink loops
        raise DecodeError("uri_unreadable", str(exc)[:200]) from exc
    if not path.is_relative_to(root):
        raise DecodeError("uri_outside_root", f"{path} is not under {root}"[:200])
    try:
        size = path.stat().st_size
        if size > cfg.max_image_bytes:
            raise DecodeError("image_too_large", f"{size} > {cfg.max_image_bytes}")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DecodeError("uri_not_found", str(exc)[:200]) from exc
    except OSError as exc:
        raise DecodeError("uri_unreadable", str(exc)[:200]) from exc


def _matches(origin: SplitResult, url: SplitResult) -> bool:
    """Same scheme, host (or a subdomain of `*.host`, or any for `*`), and port."""
    if origin.scheme != url.scheme or not url.hostname:
        return False
    want, host = origin.hostname or "", url.hostname
    if want == "*":
        return True
    if want.startswith("*."):
        if not host.endswith(want[1:]):
            return False
    elif host != want:
        return False
    default = DEFAULT_PORTS.get(url.scheme)
    return (origin.port or default) == (url.port or default)


def _abort(sock: socket.socket) -> None:
    """At the deadline: unblock whatever the fetching thread waits on."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _past(cfg: RecordConfig) -> str:
    return f"not fetched within {cfg.fetch.timeout_seconds:g} s"
