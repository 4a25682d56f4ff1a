"""Atomic checkpoints: written to a temp dir, fsynced, renamed; the last K kept.

Layout of `ckpt-NNNNNNNN/`: `weights.safetensors` (trainable parameters), `state.pt`
(optimizer, replay, evaluator, counters; read back with `weights_only=True`, so no pickled
objects), `meta.json` (id, offsets, counters, config hash; for people and tools).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors.torch import load_file, save_file

from streamer.config import CheckpointConfig

PREFIX = "ckpt-"
log = structlog.get_logger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the daemon must not commit past it."""


@dataclass(frozen=True)
class Checkpoint:
    id: str
    path: Path
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


class Checkpointer:
    def __init__(self, cfg: CheckpointConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._clock = clock
        self._last_time = clock()
        self._last_step = 0
        cfg.dir.mkdir(parents=True, exist_ok=True)

    def discard_partial(self) -> None:
        """Remove temp dirs a crash mid-write left behind (only the writer may do this)."""
        for stale in self.cfg.dir.glob(f".tmp-{PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def due(self, step: int) -> bool:
        return (
            step - self._last_step >= self.cfg.every_steps
            or self._clock() - self._last_time >= self.cfg.every_seconds
        )

    def save(self, weights: dict[str, torch.Tensor], state: dict[str, Any], meta: dict) -> str:
        """Write one checkpoint durably; returns its id."""
        number = self._next_number()
        ckpt_id = f"{PREFIX}{number:08d}"
        tmp = self.cfg.dir / f".tmp-{ckpt_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_file(
                {k: v.contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors")
            )
            torch.save(state, tmp / "state.pt")
            meta = {**meta, "id": ckpt_id, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            for name in ("weights.safetensors", "state.pt", "meta.json"):
                _fsync(tmp / name)
            _fsync(tmp)
            os.replace(tmp, self.cfg.dir / ckpt_id)
            _fsync(self.cfg.dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint in {self.cfg.dir}: {exc}") from exc
        self._last_time, self._last_step = self._clock(), int(meta.get("step", 0))
        self._prune()
        return ckpt_id

    def latest(self) -> Checkpoint | None:
        checkpoint = load_latest(self.cfg.dir)
        if checkpoint is not None:
            self._last_step = int(checkpoint.meta.get("step", 0))
        return checkpoint

    def _complete(self) -> list[Path]:
        return complete_checkpoints(self.cfg.dir)

    def _next_number(self) -> int:
        existing = self._complete()
        return int(existing[-1].name.removeprefix(PREFIX)) + 1 if existing else 1

    def _prune(self) -> None:
        for old in self._complete()[: -self.cfg.keep]:
            shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).glob(f"{PREFIX}*") if (p / "meta.json").exists())


def load_latest(directory: Path) -> Checkpoint | None:
    """The newest readable checkpoint (an unreadable one is skipped, never half-used)."""
    for path in reversed(complete_checkpoints(directory)):
        try:
            meta = json.loads((path / "meta.json").read_text())
            weights = load_file(str(path / "weights.safetensors"))
            state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
        except (
            OSError,
            ValueError,
            KeyError,
            RuntimeError,
            EOFError,
            pickle.UnpicklingError,
        ) as exc:
            log.warning(
                "checkpoint unreadable; trying an older one", path=str(path), error=str(exc)
            )
            continue
        return Checkpoint(meta["id"], path, meta, weights, state)
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
