"""Uniform replay over encoded samples: a bottom-k reservoir bounded by count and by bytes.

Every sample gets a key drawn uniformly from [0, 1). The buffer holds exactly the samples
seen so far whose key is below a threshold `tau`: while over `capacity` or `max_bytes`, the
largest key held is evicted and becomes the new `tau`; a later sample enters only if its key
is below `tau`. Membership depends on keys alone, never on arrival order, so every sample
seen is held with the same probability (capacity / n without a byte budget, as Vitter's
Algorithm R; with one, the buffer holds fewer but still uniformly drawn samples).

Memory: images stay encoded (JPEG/PNG as received), 10-50x less than decoded tensors;
`nbytes` is the encoded image plus UTF-8 text bytes held, the figure `max_bytes` bounds.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from streamer.records import Sample


class ReplayBuffer:
    """A uniform sample of the stream, at most `capacity` items and `max_bytes` bytes."""

    def __init__(self, capacity: int, max_bytes: int | None = None, seed: int | str = 0) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._keys = random.Random(f"replay-keys-{seed}")  # membership: one key per sample
        self._rng = random.Random(f"replay-draws-{seed}")  # sample(): independent of keys
        self._heap: list[tuple[float, int]] = []  # (-key, slot): the largest key on top
        self._items: dict[int, tuple[float, Sample]] = {}  # slot -> (key, sample)
        self._next_slot = 0
        self._tau = math.inf  # the smallest key ever evicted: the entry bar
        self._seen = 0
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def nbytes(self) -> int:
        """Encoded image bytes plus UTF-8 text bytes held (what `max_bytes` bounds)."""
        return self._nbytes

    @property
    def threshold(self) -> float:
        """Keys below this are held; inf until the first eviction."""
        return self._tau

    def resize(self, capacity: int, max_bytes: int | None) -> None:
        """New bounds (a policy's share); a smaller one evicts the largest keys at once."""
        self.capacity, self.max_bytes = capacity, max_bytes
        self._enforce_budget()

    def add(self, sample: Sample) -> None:
        self._seen += 1
        key = self._keys.random()  # drawn for every sample, held or not: a fixed sequence
        if key >= self._tau:
            return
        self._insert(key, sample)
        self._enforce_budget()

    def _insert(self, key: float, sample: Sample) -> None:
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        self._items[slot] = (key, sample)
        heapq.heappush(self._heap, (-key, slot))
        self._nbytes += _size(sample)

    def _over_budget(self) -> bool:
        over_bytes = self.max_bytes is not None and self._nbytes > self.max_bytes
        return len(self._items) > self.capacity or over_bytes

    def _enforce_budget(self) -> None:
        """Evict the largest keys until both bounds hold; the last evicted key becomes tau."""
        while self._items and self._over_budget():
            neg_key, slot = heapq.heappop(self._heap)
            _, victim = self._items.pop(slot)
            self._nbytes -= _size(victim)
            self._tau = -neg_key

    def items(self) -> list[Sample]:
        """The residents in order of arrival (no randomness consumed)."""
        return [self._items[slot][1] for slot in sorted(self._items)]

    def sample(self, k: int) -> list[Sample]:
        """k distinct residents (fewer if the buffer holds fewer), uniformly at random."""
        return self._rng.sample(self.items(), min(k, len(self._items)))

    def state_dict(self) -> dict[str, Any]:
        """Plain lists, numbers, strings and bytes: loadable with torch.load(weights_only=True)."""
        slots = sorted(self._items)
        return {
            "capacity": self.capacity,
            "max_bytes": self.max_bytes,
            "seen": self._seen,
            "tau": self._tau,
            "keys": [self._items[s][0] for s in slots],
            "items": [asdict(self._items[s][1]) for s in slots],
            "rng": _rng_state_to_list(self._rng.getstate()),
            "key_rng": _rng_state_to_list(self._keys.getstate()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; this buffer's own capacity and budget apply (a smaller one evicts)."""
        samples = [Sample(**item) for item in state["items"]]
        self._seen = int(state["seen"])
        self._rng.setstate(_rng_state_from_list(state["rng"]))
        if "keys" in state:
            keys, self._tau = [float(k) for k in state["keys"]], float(state["tau"])
            self._keys.setstate(_rng_state_from_list(state["key_rng"]))
        else:  # an Algorithm R state: its residents are uniform, so give them uniform keys
            evicted = len(samples) < self._seen
            self._tau = len(samples) / self._seen if evicted else math.inf
            keys = [self._keys.random() * min(self._tau, 1.0) for _ in samples]
        self._heap, self._items, self._next_slot, self._nbytes = [], {}, 0, 0
        for key, sample in zip(keys, samples, strict=True):
            self._insert(key, sample)
        self._enforce_budget()


def _size(sample: Sample) -> int:
    return len(sample.image) + len(sample.text.encode())


def _rng_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_list(state: Sequence) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
