"""Reservoir replay buffer (Vitter's Algorithm R) over encoded samples.

Every sample seen so far is held with equal probability capacity / n. Images stay encoded
(JPEG/PNG as received): 10-50x less memory than decoded tensors.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from streamer.records import Sample


class ReplayBuffer:
    """Fixed-capacity uniform sample of the stream; optional budget on held image bytes.

    With `max_bytes`, a sample that would exceed the budget is only admitted after enough
    random residents are evicted (still uniform among residents; the count may fall below
    capacity when images are large).
    """

    def __init__(self, capacity: int, max_bytes: int | None = None, seed: int = 0) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._rng = random.Random(seed)
        self._items: list[Sample] = []
        self._seen = 0
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def nbytes(self) -> int:
        """Bytes of encoded images and texts held."""
        return self._nbytes

    def add(self, sample: Sample) -> None:
        self._seen += 1
        if self.capacity == 0:
            return
        if len(self._items) < self.capacity:
            self._items.append(sample)
            self._nbytes += _size(sample)
        else:
            slot = self._rng.randrange(self._seen)  # keep with probability capacity / seen
            if slot >= self.capacity:
                return
            self._nbytes += _size(sample) - _size(self._items[slot])
            self._items[slot] = sample
        self._enforce_budget(keep=sample)

    def _enforce_budget(self, keep: Sample) -> None:
        while self.max_bytes is not None and self._nbytes > self.max_bytes and len(self) > 1:
            slot = self._rng.randrange(len(self._items))
            if self._items[slot] is keep:
                continue
            victim = self._items[slot]
            self._items[slot] = self._items[-1]
            self._items.pop()
            self._nbytes -= _size(victim)

    def items(self) -> list[Sample]:
        """The residents, in slot order (no randomness consumed)."""
        return list(self._items)

    def sample(self, k: int) -> list[Sample]:
        """k distinct residents (fewer if the buffer holds fewer), uniformly at random."""
        return self._rng.sample(self._items, min(k, len(self._items)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "seen": self._seen,
            "rng": _rng_state_to_list(self._rng.getstate()),
            "items": [asdict(s) for s in self._items],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen = int(state["seen"])
        self._rng.setstate(_rng_state_from_list(state["rng"]))
        self._items = [Sample(**item) for item in state["items"]][: self.capacity]
        self._nbytes = sum(_size(s) for s in self._items)


def _size(sample: Sample) -> int:
    return len(sample.image) + len(sample.text.encode())


def _rng_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_list(state: Sequence) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
