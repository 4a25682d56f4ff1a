"""The checkpoint directory's owner: an exclusive `flock` on `DIR/daemon.lock`.

The daemon takes it at start and holds it for its lifetime; offline tools that write
checkpoints (`streamer rollback`) take it too, so the two never write at once. The kernel
releases a flock when its holder's file is closed, including when the process is killed
(SIGKILL, OOM), so a crash never leaves a stale lock behind. The file itself stays; its
content (the holder's pid and host) is only for the message.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

LOCK_FILE = "daemon.lock"


class DirectoryLocked(RuntimeError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirectoryLock:
        """Take the lock now or raise DirectoryLocked naming the holder; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryLocked(
                f"{self.path.parent} is in use by a running daemon ({holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def is_locked(directory: Path) -> bool:
    """Whether another process holds `directory`'s lock right now (a probe, released at once)."""
    try:
        DirectoryLock(directory).acquire().release()
    except DirectoryLocked:
        return True
    return False
