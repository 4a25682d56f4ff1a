"""Checking an export or a published version against its manifest, on any fsspec filesystem.

`manifest.json` lists the sha256 of every other file of the folder. `verify(target)` reads
every file back and checks: no file listed is missing, none is there that is not listed,
and every digest matches. The first problem raises `VerifyError` naming the file. It needs
only fsspec and the standard library (no torch, no open_clip), so serving code can call it
before loading a model:

    from streamer.state.verify import verify
    manifest = verify("s3://models/clip")        # the version latest.json names
    manifest = verify("/mnt/published/versions/v000042")
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fsspec

MANIFEST = "manifest.json"
LATEST = "latest.json"
CHUNK = 1 << 20


class VerifyError(RuntimeError):
    """The folder does not match its manifest; the message names the file."""


class NothingToVerify(VerifyError):
    """No folder there, or one with neither a manifest nor a `latest.json`."""


def sha256(path: Path) -> str:
    """Hex sha256 of a local file, read in chunks."""
    with open(path, "rb") as f:
        return _digest(f)


def _digest(stream: Any) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def verify(target: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a folder with a manifest (an export, `versions/vN`), or a store root (the version
    its `latest.json` names). Returns the manifest; raises VerifyError on any mismatch."""
    fs, root = fsspec.core.url_to_fs(str(target), **(storage_options or {}))
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{MANIFEST}") and fs.exists(f"{root}/{LATEST}"):
        path = _json(fs, f"{root}/{LATEST}").get("path")
        if not isinstance(path, str):
            raise VerifyError(f"{root}/{LATEST}: names no version path")
        root = f"{root}/{path}"
    return verify_folder(fs, root)


def verify_folder(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, Any]:
    """`verify` on a filesystem and path already resolved (the version store uses this)."""
    if not fs.isdir(root):
        raise NothingToVerify(f"{root}: no such folder")
    if not fs.exists(f"{root}/{MANIFEST}"):
        raise NothingToVerify(f"{root}: no {MANIFEST} (nor {LATEST}) here")
    manifest = _json(fs, f"{root}/{MANIFEST}")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise VerifyError(f"{root}/{MANIFEST}: no 'files' table")
    present = {p[len(root) + 1 :] for p in fs.find(root)} - {MANIFEST}
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing:
        raise VerifyError(f"{missing[0]}: listed in the manifest but missing")
    if extra:
        raise VerifyError(f"{extra[0]}: present but not in the manifest")
    for name in sorted(listed):
        with fs.open(f"{root}/{name}", "rb") as f:
            if _digest(f) != listed[name]:
                raise VerifyError(f"{name}: sha256 does not match the manifest")
    return manifest


def _json(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    try:
        data = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise VerifyError(f"{path}: missing") from None
    except ValueError as exc:
        raise VerifyError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise VerifyError(f"{path}: not a JSON object")
    return data
