"""An update's pixels: the step's fresh rows once, each update's replayed rows behind them.

The default shape runs 3 updates of 64 fresh + 32 replayed images per batch. Stacking all 96
rows anew for each update (and allocating 14 MB at 224 px each time, page faults included)
costs the training thread more than the rest of its own work; here the fresh rows are put at
the head of a buffer kept between steps, once per step, and each update writes only its
replayed rows behind them. On a GPU the buffer lives on the device: `pixels` residents held
there are stacked in place, host rows arrive in one pinned, non-blocking copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from streamer.learning.model import ClipModel
from streamer.records import Pair


class UpdateBatches:
    def __init__(self, model: ClipModel) -> None:
        self.model = model
        self._buf: torch.Tensor | None = None
        self._fresh: torch.Tensor | None = None

    def stack(self, batch: Sequence[Pair]) -> torch.Tensor:
        return self.model.stack_pixels([p.pixels for p in batch])  # [B, 3, H, W]

    def stage(self, fresh: Sequence[Pair], replayed: int) -> torch.Tensor:
        """The fresh rows on the device, kept at the buffer's head for this step's updates."""
        head = self._fresh = self.stack(fresh).to(self.model.device, non_blocking=True)
        rows, buf = len(head) + replayed, self._buf
        shape = (rows, *head.shape[1:])
        if buf is None or (buf.shape, buf.dtype, buf.device) != (shape, head.dtype, head.device):
            buf = self._buf = torch.empty(shape, dtype=head.dtype, device=head.device)
        buf[: len(head)].copy_(head)
        return head

    def join(self, drawn: Sequence[Pair]) -> torch.Tensor:
        """An update's input: the staged fresh rows and this update's replayed ones."""
        fresh, buf = self._fresh, self._buf
        if fresh is None or buf is None:
            raise RuntimeError("UpdateBatches.join before stage")
        if not drawn:
            return fresh
        rows, n = [p.pixels for p in drawn], len(fresh)
        fits = n + len(rows) <= len(buf)
        if fits and all(r.dtype == buf.dtype and r.device == buf.device for r in rows):
            torch.stack(rows, out=buf[n : n + len(rows)])  # replayed rows, where they lie
            return buf[: n + len(rows)]
        replayed = self.stack(drawn).to(fresh.device, non_blocking=True)  # e.g. from the host
        if replayed.dtype != fresh.dtype:  # encoded and pixels residents mixed: normalise both
            fresh, replayed = self.model.normalise(fresh), self.model.normalise(replayed)
        return torch.cat([fresh, replayed])
