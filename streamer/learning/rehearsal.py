"""Rehearsal of the base's domain: a fixed set of its pairs mixed into every update.

SIT scores each update's images only against that update's texts. On a stream of new labels
alone, the base's images are never contrasted with the new labels, nor the new images with
the base's: at the end each domain drifts onto the other's labels. Pairs of the base's
domain in every update put both label sets into the same contrast, so the new labels are
learned against the old ones (benchmarks/results/quality-from-base.md measures it).
"""

from __future__ import annotations

import random
from typing import Any

from streamer.records import Pair


class Rehearsal:
    """The manifest's pairs (decoded once) and the seeded draw of each update's share."""

    def __init__(self, pairs: list[Pair], seed: int = 0) -> None:
        self.pairs = pairs
        self._rng = random.Random(f"rehearsal-{seed}")

    def __len__(self) -> int:
        return len(self.pairs)

    def draw(self, k: int) -> list[Pair]:
        """k distinct pairs (all of them when there are fewer), in a seeded order."""
        if k <= 0 or not self.pairs:
            return []
        return self._rng.sample(self.pairs, min(k, len(self.pairs)))

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:  # none in a checkpoint from before rehearsal: the seeded start
            version, internal, gauss = state["rng"]
            self._rng.setstate((version, tuple(internal), gauss))
