"""/metrics, /healthz and /readyz on one port, and what healthy and ready mean."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from streamer.intake.source import SourceStats

Check = Callable[[], tuple[bool, str]]


def healthy(
    state: str,
    stats: SourceStats | None,
    failure: str | None,
    last_step: float,
    stall_seconds: float,
    now: float,
) -> tuple[bool, str]:
    """Progress: nothing failed, polling goes on, and steps go on while records wait.

    A broker outage is not a lack of progress: the daemon waits for it (not ready, but
    live), so a restart would only add its back-off to the outage."""
    if state == "failed" or failure is not None:
        return False, f"failed: {failure}" if failure else "failed"
    if stats is None:
        return True, state
    outage = stats.disconnected_since is not None
    if stats.last_poll and not outage and now - stats.last_poll > stall_seconds:
        return False, f"no poll for {now - stats.last_poll:.0f} s"
    if stats.buffered > 0 and now - last_step > stall_seconds:
        return False, f"no step for {now - last_step:.0f} s with records waiting"
    return True, "ok"


def ready(state: str, stats: SourceStats | None, now: float) -> tuple[bool, str]:
    """Restored, given partitions (or this rank's share), and the broker is reachable."""
    if state != "running" or stats is None or not stats.joined:
        return False, f"{state}, not yet in the group"
    if stats.disconnected_since is not None:
        away = now - stats.disconnected_since
        return False, f"no broker reachable for {away:.0f} s; retrying"
    return True, f"running with {len(stats.assigned)} partitions"


class HealthServer:
    def __init__(
        self, registry: CollectorRegistry, healthy: Check, ready: Check, host: str, port: int
    ) -> None:
        routes = {"/healthz": healthy, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path in routes:
                    ok, why = routes[path]()
                    body, status, kind = why.encode() + b"\n", 200 if ok else 503, "text/plain"
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
