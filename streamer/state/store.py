"""Published versions on any fsspec filesystem: a local directory, `memory://`, s3, gcs.

Layout under the URL:
    versions/v000001/manifest.json, the exported files ...   (immutable once written)
    latest.json                                               (the pointer readers follow)

A version is written in full, manifest last, before `latest.json` is swapped to name it; the
swap is atomic (a rename on a local disk, one PUT on an object store, one entry in memory),
so a reader sees the old pointer or the new one, and every file either names exists whole.
A version number is never written twice: an existing version is an error, not an overwrite.
Before the pointer moves, the uploaded version is read back and checked against its manifest
(`streamer.state.verify`); one that does not match is removed and the publish fails.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from streamer.state.verify import MANIFEST, VerifyError, verify_folder

LATEST = "latest.json"
VERSIONS = "versions"


class StoreError(RuntimeError):
    """The store cannot be read or written (the publisher retries, counts, goes on)."""


class VersionStore:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def versions(self) -> list[str]:
        """Version names whose manifest was written (complete ones), oldest first."""
        base = self._path(VERSIONS)
        if not self.fs.exists(base):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(n for n in names if self.fs.exists(self._path(VERSIONS, n, MANIFEST)))

    def latest(self) -> dict[str, Any] | None:
        """The pointer: {"version", "path", "manifest", "published"}; None before any."""
        try:
            return json.loads(self.fs.cat_file(self._path(LATEST)))
        except FileNotFoundError:
            return None

    def next_version(self) -> str:
        numbers = [int(n[1:]) for n in self.versions() if n[1:].isdigit()]
        return f"v{max(numbers, default=0) + 1:06d}"

    def publish(self, local: Path, version: str | None = None) -> str:
        """Upload the export in `local` as a new version, then point `latest.json` at it."""
        version = version or self.next_version()
        target = self._path(VERSIONS, version)
        if self.fs.exists(self._path(VERSIONS, version, MANIFEST)):
            raise StoreError(f"version {version} exists; versions are immutable")
        files = sorted(p for p in local.iterdir() if p.is_file() and p.name != MANIFEST)
        try:
            self.fs.makedirs(target, exist_ok=True)
            for path in [*files, local / MANIFEST]:  # the manifest last: it marks it complete
                self.fs.put_file(str(path), f"{target}/{path.name}")
            manifest = self._verified(target, version)
            pointer = {"version": version, "path": f"{VERSIONS}/{version}",
                       "manifest": manifest, "published": time.time()}  # fmt: skip
            self._swap(json.dumps(pointer, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise StoreError(f"cannot publish {version} to {self.url}: {exc}") from exc
        return version

    def _verified(self, target: str, version: str) -> dict[str, Any]:
        """The uploaded version read back against its manifest; removed if it does not match."""
        try:
            return verify_folder(self.fs, target)
        except VerifyError as exc:
            self.fs.rm(target, recursive=True)  # never pointed at: a later try reuses the number
            raise StoreError(f"uploaded {version} does not verify: {exc}") from exc

    def verify(self, version: str | None = None) -> dict[str, Any]:
        """Check a version (default: the one latest.json names) against its manifest."""
        if version is None:
            pointer = self.latest()
            if pointer is None:
                raise VerifyError(f"{self.url}: nothing published yet")
            version = pointer["version"]
        return verify_folder(self.fs, self._path(VERSIONS, version))

    def _swap(self, data: bytes) -> None:
        path = self._path(LATEST)
        if not isinstance(self.fs, LocalFileSystem):
            self.fs.pipe_file(path, data)  # one object written whole (PUT; a dict entry)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on one filesystem

    def read(self, version: str, name: str) -> bytes:
        return self.fs.cat_file(self._path(VERSIONS, version, name))
