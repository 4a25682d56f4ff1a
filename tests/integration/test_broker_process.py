"""`streamer broker` started by another program and terminated leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.dev.broker import free_port

from .conftest import wait_until


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize(
    ("stop", "code"),
    [(signal.SIGTERM, 0), (signal.SIGINT, 0), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["SIGTERM", "SIGINT", "SIGKILL"],  # SIGKILL: the kernel's parent-death signal
)
def test_a_terminated_broker_command_leaves_no_child_and_frees_its_port(tmp_path, stop, code):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer", "broker", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert b"broker listening" in process.stdout.readline()
        children = _children(process.pid)
        assert children, "Tansu runs as a child"
        process.send_signal(stop)
        assert process.wait(timeout=20) == code
        wait_until(lambda: not any(_alive(c) for c in children), 10, "the child to exit")
        wait_until(lambda: not _listening(port), 10, "the port to be freed")
        with socket.socket() as s:  # free for the next broker
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
