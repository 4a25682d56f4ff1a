"""JSONL manifests of image-text pairs: `{"image": path, "text": ..., "label": ...}` per line,
paths relative to the file. The reference probe set is one; the harness streams others."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ManifestError(ValueError):
    """A manifest line or the image it names cannot be used; the message says which."""


@dataclass(frozen=True)
class Entry:
    key: str
    image: Path
    text: str | None
    label: str | None


def read_manifest(path: Path) -> list[Entry]:
    entries = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            image = (Path(path).parent / entry["image"]).resolve()
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{path}:{n + 1}: {exc!r}") from exc
        entries.append(Entry(f"{Path(path).stem}-{n}", image, entry.get("text"),
                             entry.get("label")))  # fmt: skip
    return entries
