"""Uniform replay over encoded samples: a bottom-k reservoir bounded by count and by bytes.

Every sample gets a key drawn uniformly from [0, 1). The buffer holds exactly the samples
seen so far whose key is below a threshold `tau`: while over `capacity` or `max_bytes`, the
largest key held is evicted and becomes the new `tau`; a later sample enters only if its key
is below `tau`. Membership depends on keys alone, never on arrival order, so every sample
seen is held with the same probability (capacity / n without a byte budget, as Vitter's
Algorithm R; with one, the buffer holds fewer but still uniformly drawn samples).

Two stores (`replay.store`). `encoded` keeps images as received (JPEG/PNG), 10-50x smaller
than pixels, and a replayed sample is decoded again each time it is drawn. `pixels` keeps the
uint8 tensor at model resolution ([3, 224, 224] is 147 KiB), optionally on the device, so a
draw costs no decoding at all; the encoded image is dropped. `nbytes`, the figure `max_bytes`
bounds, counts what is held: the encoded image or the pixels, plus the UTF-8 text.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections.abc import Callable
from typing import Any, Literal

import torch

from streamer.learning.precision import upload
from streamer.learning.replay_state import pack, rng_state, set_rng_state, unpack
from streamer.records import Pair, Sample

Entry = Sample | Pair  # a resident: encoded, or decoded to pixels (its image bytes dropped)
Store = Literal["encoded", "pixels"]


def sample_of(entry: Entry) -> Sample:
    return entry.sample if isinstance(entry, Pair) else entry


class ReplayBuffer:
    """A uniform sample of the stream, at most `capacity` items and `max_bytes` bytes."""

    def __init__(
        self,
        capacity: int,
        max_bytes: int | None = None,
        seed: int | str = 0,
        store: Store = "encoded",
        device: torch.device | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.store = store
        self.device = device  # where pixels are kept (None: host memory)
        self._keys = random.Random(f"replay-keys-{seed}")  # membership: one key per sample
        self._rng = random.Random(f"replay-draws-{seed}")  # sample(): independent of keys
        self._heap: list[tuple[float, int]] = []  # (-key, slot): the largest key on top
        self._items: dict[int, tuple[float, Entry]] = {}  # slot -> (key, entry)
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
        """Encoded image (or pixel) bytes plus UTF-8 text bytes held (what `max_bytes` bounds)."""
        return self._nbytes

    @property
    def threshold(self) -> float:
        """Keys below this are held; inf until the first eviction."""
        return self._tau

    def resize(self, capacity: int, max_bytes: int | None) -> None:
        """New bounds (a policy's share); a smaller one evicts the largest keys at once."""
        self.capacity, self.max_bytes = capacity, max_bytes
        self._enforce_budget()

    def add(self, item: Entry) -> None:
        """Offer a sample (a decoded Pair is kept as pixels by the `pixels` store)."""
        self._seen += 1
        key = self._keys.random()  # drawn for every sample, held or not: a fixed sequence
        if key >= self._tau:
            return
        self._insert(key, self._entry(item))
        self._enforce_budget()

    def _entry(self, item: Entry) -> Entry:
        if not isinstance(item, Pair):
            return item
        if self.store == "encoded" or item.pixels.dtype != torch.uint8:
            return item.sample
        pixels = item.pixels if self.device is None else upload(item.pixels, self.device)
        return Pair(dataclasses.replace(item.sample, image=b""), pixels)

    def _insert(self, key: float, entry: Entry) -> None:
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        self._items[slot] = (key, entry)
        heapq.heappush(self._heap, (-key, slot))
        self._nbytes += _size(entry)

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

    def items(self) -> list[Entry]:
        """The residents in order of arrival (no randomness consumed)."""
        return [self._items[slot][1] for slot in sorted(self._items)]

    def sample(self, k: int) -> list[Entry]:
        """k distinct residents (fewer if the buffer holds fewer), uniformly at random."""
        return self._rng.sample(self.items(), min(k, len(self._items)))

    def state_dict(self) -> dict[str, Any]:
        """Plain lists, numbers, strings, bytes and uint8 tensors (a `pixels` resident's, on the
        host): loadable with torch.load(weights_only=True)."""
        return self.frozen(non_blocking=False)()

    def frozen(self, non_blocking: bool = True) -> Callable[[], dict[str, Any]]:
        """The state as of now, built later (on a checkpoint's writer thread): residents are
        immutable, so holding them costs a list of references, whatever they hold. Pixels on
        a device leave it in one copy, to pinned memory (`non_blocking`: the caller waits for
        the stream before building). Residents are saved as columns (`replay_state`)."""
        slots = sorted(self._items)
        held = [self._items[s] for s in slots]  # (key, entry) pairs, never changed in place
        fixed = {"capacity": self.capacity, "max_bytes": self.max_bytes, "seen": self._seen,
                 "tau": self._tau, "rng": rng_state(self._rng),
                 "key_rng": rng_state(self._keys)}  # fmt: skip
        entries = [entry for _, entry in held]
        stacked = _to_host(entries, non_blocking)

        def build() -> dict[str, Any]:
            moved = {row for rows, _ in stacked for row in rows}
            loose = {n: e.pixels.cpu() for n, e in enumerate(entries)
                     if isinstance(e, Pair) and n not in moved}  # fmt: skip
            keys = torch.tensor([key for key, _ in held], dtype=torch.float64)
            items = pack([sample_of(e) for e in entries], stacked, loose)
            return {**fixed, "keys": keys, "items": items}

        return build

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; this buffer's own capacity and budget apply (a smaller one evicts)."""
        items, held = unpack(state)
        samples: list[Entry] = [Sample(**{**i, "image": i["image"] or b""}) for i in items]
        for i, pixels in enumerate(held):
            if pixels is not None:  # held as pixels when saved: kept so, whatever the store
                own = pixels.clone() if self.device is None else pixels.to(self.device)
                samples[i] = Pair(sample_of(samples[i]), own)  # not a view into a whole stack
        self._seen = int(state["seen"])
        set_rng_state(self._rng, state["rng"])
        if "keys" in state:
            keys, self._tau = _floats(state["keys"]), float(state["tau"])
            set_rng_state(self._keys, state["key_rng"])
        else:  # an Algorithm R state: its residents are uniform, so give them uniform keys
            evicted = len(samples) < self._seen
            self._tau = len(samples) / self._seen if evicted else math.inf
            keys = [self._keys.random() * min(self._tau, 1.0) for _ in samples]
        self._heap, self._items, self._next_slot, self._nbytes = [], {}, 0, 0
        for key, sample in zip(keys, samples, strict=True):
            self._insert(key, sample)
        self._enforce_budget()


def _to_host(entries: list[Entry], non_blocking: bool) -> list[tuple[list[int], torch.Tensor]]:
    """Residents' pixels held on a device, copied to the host in one transfer (not one
    synchronising copy each): [(rows, their pixels stacked)]. Empty when none, or not all
    alike (then each is copied on its own, on the writer thread)."""
    rows = [i for i, e in enumerate(entries) if isinstance(e, Pair) and e.pixels.is_cuda]
    kinds = {(entries[i].pixels.shape, entries[i].pixels.dtype) for i in rows}  # type: ignore[union-attr]
    if not rows or len(kinds) != 1:
        return []
    stacked = torch.stack([entries[i].pixels for i in rows])  # type: ignore[union-attr]
    host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
    host.copy_(stacked, non_blocking=non_blocking)
    return [(rows, host)]


def _floats(keys: Any) -> list[float]:
    """Keys as saved: a float64 tensor, or the list earlier checkpoints hold."""
    return [float(k) for k in (keys.tolist() if isinstance(keys, torch.Tensor) else keys)]


def _size(entry: Entry) -> int:
    if isinstance(entry, Pair):
        return entry.pixels.nbytes + len(entry.sample.text.encode())
    return len(entry.image) + len(entry.text.encode())
