"""A reservoir's residents as a few columns, for a checkpoint.

torch.save calls back into Python for every object it pickles, holding the GIL the training
thread needs between its ops; 2,000 residents as one dict each are ~30,000 objects, so a
background checkpoint slowed the steps it overlapped by the time it took to pickle them.
As columns (the text fields as one JSON document, the images as one byte tensor, pixels
from a device as one stack) they are a few hundred objects, whatever the capacity. A host
`pixels` store adds one tensor per resident: stacking them would copy the whole store.

`unpack` reads both this layout and the list of dicts earlier checkpoints hold.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from typing import Any

import torch

from streamer.records import Sample

LAYOUT = "columns"
FIELDS = tuple(f.name for f in dataclasses.fields(Sample) if f.name != "image")


def pack(
    samples: Sequence[Sample],
    stacked: Sequence[tuple[Sequence[int], torch.Tensor]] = (),
    loose: dict[int, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Residents as columns. Pixels, for `pixels` residents (their image was dropped: length
    -1, and `unpack` gives image None): `stacked`, (rows, one tensor of them) as a transfer
    from a device landed; `loose`, row -> tensor, host residents saved as they are (stacking
    them would copy the whole store at every checkpoint)."""
    loose = loose or {}
    held = set(loose) | {row for rows, _ in stacked for row in rows}
    lengths = [-1 if n in held else len(s.image) for n, s in enumerate(samples)]
    images = b"".join(s.image for n, s in enumerate(samples) if n not in held)
    columns = {name: [getattr(s, name) for s in samples] for name in FIELDS}
    return {
        "layout": LAYOUT,
        "columns": _bytes_tensor(json.dumps(columns).encode()),  # ASCII: lone surrogates escaped
        "images": _bytes_tensor(images),
        "lengths": torch.tensor(lengths, dtype=torch.int64),
        "stacked": [(torch.tensor(list(rows), dtype=torch.int64), t) for rows, t in stacked],
        "loose_rows": torch.tensor(sorted(loose), dtype=torch.int64),
        "loose": [loose[row] for row in sorted(loose)],
    }


def unpack(state: dict[str, Any]) -> tuple[list[dict[str, Any]], list[torch.Tensor | None]]:
    """(item dicts as `Sample(**item)` takes them, image None where pixels are held; per
    resident its pixels or None). Stacked pixels come as views into their stack."""
    items = state["items"]
    if not isinstance(items, dict):  # the earlier layout: a dict per resident
        listed = list(state.get("pixels") or [])
        return list(items), listed + [None] * (len(items) - len(listed))
    columns = json.loads(items["columns"].numpy().tobytes())
    images, at, rows = items["images"].numpy().tobytes(), 0, []
    for n, length in enumerate(items["lengths"].tolist()):
        row = {name: columns[name][n] for name in FIELDS}
        row["image"] = None if length < 0 else images[at : at + length]
        at += max(length, 0)
        rows.append(row)
    pixels: list[torch.Tensor | None] = [None] * len(rows)
    for indices, tensor in items["stacked"]:
        for n, row in enumerate(indices.tolist()):
            pixels[row] = tensor[n]
    for row, tensor in zip(items["loose_rows"].tolist(), items["loose"], strict=True):
        pixels[row] = tensor
    return rows, pixels


def rng_state(rng: random.Random) -> list:
    """A Random's state for torch.load(weights_only=True): its 625 words as one tensor."""
    version, internal, gauss = rng.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def set_rng_state(rng: random.Random, state: Sequence) -> None:
    """Restore `rng_state`'s output, or the plain list earlier checkpoints hold."""
    version, internal, gauss = state
    words = internal.tolist() if isinstance(internal, torch.Tensor) else internal
    rng.setstate((version, tuple(int(w) for w in words), gauss))


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.empty(0, dtype=torch.uint8)
    )
