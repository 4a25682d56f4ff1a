"""Replay policies beyond one uniform reservoir (TiC-CLIP, Garg et al. 2024), built from the
same bottom-k reservoir, so each part stays uniform, byte-bounded and checkpointed.

- per_window ("Equal"): one reservoir per window, each an equal share of the capacity and
  the byte budget; a new window shrinks every share (the largest keys leave), and past
  `max_windows` the oldest window leaves. Draws take an equal number from each window.
- recent_and_reservoir ("Exp" flavour): `recent_share` of capacity and bytes for the
  current window, the rest a reservoir over the whole stream; a new window starts its
  recent part empty. Draws take the recent share from the recent part.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from streamer.config import ReplayConfig
from streamer.learning.replay import Entry, ReplayBuffer, sample_of
from streamer.learning.replay_state import rng_state, set_rng_state
from streamer.records import Sample

WindowOf = Callable[[Sample], str]


def _share(total: int | None, parts: int, share: float = 1.0) -> int | None:
    return None if total is None else max(1, int(total * share / parts))


class PerWindowReplay:
    def __init__(
        self, cfg: ReplayConfig, seed: int, window_of: WindowOf, device: torch.device | None = None
    ) -> None:
        self.cfg, self.capacity, self._seed, self._window_of = cfg, cfg.capacity, seed, window_of
        self.device = device
        self.windows: dict[str, ReplayBuffer] = {}  # in order of arrival
        self._rng = random.Random(f"per-window-draws-{seed}")
        self._seen = 0

    def _new(self, window: str) -> ReplayBuffer:
        return ReplayBuffer(self.cfg.capacity, self.cfg.max_bytes, f"{self._seed}-{window}",
                            self.cfg.store, self.device)  # fmt: skip

    def add(self, sample: Entry) -> None:
        self._seen += 1
        if self.capacity == 0:
            return
        window = self._window_of(sample_of(sample))
        if window not in self.windows:
            self.windows[window] = self._new(window)
            while len(self.windows) > min(self.cfg.max_windows, self.capacity):
                self.windows.pop(next(iter(self.windows)))  # the oldest leaves
            self._rebalance()
        self.windows[window].add(sample)

    def _rebalance(self) -> None:
        parts = len(self.windows)
        for buffer in self.windows.values():
            buffer.resize(self.capacity // parts, _share(self.cfg.max_bytes, parts))

    def sample(self, k: int) -> list[Entry]:
        """An equal number from each window (the remainder to the newest ones)."""
        buffers = [b for b in self.windows.values() if len(b)]
        if not buffers:
            return []
        per, extra = divmod(min(k, len(self)), len(buffers))
        out: list[Entry] = []
        for i, buffer in enumerate(buffers):
            out += buffer.sample(per + (1 if i >= len(buffers) - extra else 0))
        self._rng.shuffle(out)
        return out

    def items(self) -> list[Entry]:
        return [s for b in self.windows.values() for s in b.items()]

    def __len__(self) -> int:
        return sum(len(b) for b in self.windows.values())

    @property
    def seen(self) -> int:
        return self._seen

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.windows.values())

    def state_dict(self) -> dict[str, Any]:
        return self.frozen(non_blocking=False)()

    def frozen(self, non_blocking: bool = True) -> Callable[[], dict[str, Any]]:
        """As `ReplayBuffer.frozen`: each window's state as of now, built later."""
        fixed = {"policy": "per_window", "seen": self._seen, "rng": rng_state(self._rng)}
        parts = {w: b.frozen(non_blocking) for w, b in self.windows.items()}
        return lambda: {**fixed, "windows": {w: build() for w, build in parts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen = int(state["seen"])
        set_rng_state(self._rng, state["rng"])
        self.windows = {}
        for window in state["windows"]:
            self.windows[window] = self._new(window)
        self._rebalance()
        for window, buffer_state in state["windows"].items():
            self.windows[window].load_state_dict(buffer_state)


class RecentAndReservoirReplay:
    def __init__(
        self, cfg: ReplayConfig, seed: int, window_of: WindowOf, device: torch.device | None = None
    ) -> None:
        self.cfg, self.capacity, self._seed, self._window_of = cfg, cfg.capacity, seed, window_of
        self.device = device
        share = cfg.recent_share
        self.old = ReplayBuffer(
            cfg.capacity - int(cfg.capacity * share),
            _share(cfg.max_bytes, 1, 1 - share),
            f"{seed}-all",
            cfg.store,
            device,
        )
        self._recent_bounds = (int(cfg.capacity * share), _share(cfg.max_bytes, 1, share))
        self.window: str | None = None
        self.recent = self._new_recent()
        self._rng = random.Random(f"recent-draws-{seed}")

    def _new_recent(self) -> ReplayBuffer:
        return ReplayBuffer(*self._recent_bounds, f"{self._seed}-recent-{self.window}",
                            self.cfg.store, self.device)  # fmt: skip

    def add(self, sample: Entry) -> None:
        window = self._window_of(sample_of(sample))
        if window != self.window:  # the stream moved on: a fresh recent part
            self.window = window
            self.recent = self._new_recent()
        self.recent.add(sample)
        self.old.add(sample)

    def sample(self, k: int) -> list[Entry]:
        """The recent share of k from the current window, the rest from the whole stream."""
        recent = self.recent.sample(round(k * self.cfg.recent_share))
        taken = {sample_of(s).id for s in recent}
        rest = [s for s in self.old.sample(k) if sample_of(s).id not in taken][: k - len(recent)]
        out = recent + rest
        self._rng.shuffle(out)
        return out

    def items(self) -> list[Entry]:
        held = {sample_of(s).id: s for s in self.old.items()}
        held.update({sample_of(s).id: s for s in self.recent.items()})
        return list(held.values())

    def __len__(self) -> int:
        return len(self.items())

    @property
    def seen(self) -> int:
        return self.old.seen

    @property
    def nbytes(self) -> int:
        return self.old.nbytes + self.recent.nbytes  # a sample in both parts counts twice

    def state_dict(self) -> dict[str, Any]:
        return self.frozen(non_blocking=False)()

    def frozen(self, non_blocking: bool = True) -> Callable[[], dict[str, Any]]:
        """As `ReplayBuffer.frozen`: both parts' state as of now, built later."""
        fixed = {"policy": "recent_and_reservoir", "window": self.window,
                 "rng": rng_state(self._rng)}  # fmt: skip
        old, recent = self.old.frozen(non_blocking), self.recent.frozen(non_blocking)
        return lambda: {**fixed, "old": old(), "recent": recent()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = state["window"]
        self.recent = self._new_recent()
        self.old.load_state_dict(state["old"])
        self.recent.load_state_dict(state["recent"])
        set_rng_state(self._rng, state["rng"])


def build_replay(cfg: ReplayConfig, seed: int, window_of: WindowOf, device=None):
    """The configured policy (all share ReplayBuffer's verbs); `device` is the model's, where
    a `pixels` store with `on_device` keeps its tensors."""
    keep = device if cfg.store == "pixels" and cfg.on_device else None
    if cfg.policy == "per_window":
        return PerWindowReplay(cfg, seed, window_of, keep)
    if cfg.policy == "recent_and_reservoir":
        return RecentAndReservoirReplay(cfg, seed, window_of, keep)
    return ReplayBuffer(cfg.capacity, cfg.max_bytes, seed, cfg.store, keep)
