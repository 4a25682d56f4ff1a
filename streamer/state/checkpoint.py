"""Atomic checkpoints: written to a temp dir, fsynced, renamed; the last K kept.

Layout of `ckpt-NNNNNNNN/`: `weights.safetensors` (trainable parameters), `state.pt`
(optimizer, replay, evaluator, counters; read back with `weights_only=True`, so no pickled
objects), `meta.json` (id, offsets, counters, config hash; for people and tools).

A checkpoint that cannot be read, for whatever reason (a truncated file, garbled JSON, a
disk error), is skipped for the next older one and renamed `ckpt-NNNNNNNN.damaged` by the
writer, so it is looked at once and kept for inspection. Numbers are never reused.

Pruning keeps the last K, published checkpoints (`keep_published`), and any checkpoint a
kept one was rolled back to: a rollback never loses its target to the keep window.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors.torch import load_file, save_file

from streamer.config import CheckpointConfig

PREFIX = "ckpt-"
DAMAGED = ".damaged"
PUBLISHED = "published"  # a file the publisher adds: kept as a rollback target
FILES = ("weights.safetensors", "state.pt", "meta.json")
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
        self.skipped = 0  # unreadable checkpoints passed over since start
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
        ckpt_id = f"{PREFIX}{self._next_number():08d}"
        tmp = self.cfg.dir / f".tmp-{ckpt_id}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_file(
                {k: v.contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors")
            )
            torch.save(state, tmp / "state.pt")
            meta = {**meta, "id": ckpt_id, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            for name in FILES:
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

    def readable(self) -> Iterator[Checkpoint]:
        """Checkpoints newest first; an unreadable one is logged, counted, set aside."""
        for path in reversed(complete_checkpoints(self.cfg.dir)):
            try:
                checkpoint = read(path)
            except Exception as exc:  # whatever broke it, an older one may still serve
                self.set_aside(path, f"{type(exc).__name__}: {exc}")
                continue
            self._last_step = int(checkpoint.meta.get("step", 0))
            yield checkpoint

    def set_aside(self, path: Path, why: str) -> None:
        """Count and keep a damaged checkpoint under another name; its number stays used."""
        self.skipped += 1
        log.error("checkpoint unreadable; falling back to an older one", checkpoint=path.name,
                  error=why[:300])  # fmt: skip
        try:
            os.replace(path, path.with_name(path.name + DAMAGED))
        except OSError as exc:  # a read-only volume: skipped again next time, still safe
            log.warning("cannot rename the damaged checkpoint", error=str(exc))

    def latest(self) -> Checkpoint | None:
        return next(self.readable(), None)

    def _next_number(self) -> int:
        used = [_number(p) for p in self.cfg.dir.glob(f"{PREFIX}*")]
        return max([n for n in used if n is not None], default=0) + 1

    def _prune(self) -> None:
        kept = complete_checkpoints(self.cfg.dir)[-self.cfg.keep :]
        oldest = _number(kept[0]) if kept else None
        targets = _rollback_targets(kept)
        for old in self.cfg.dir.glob(f"{PREFIX}*"):
            number = _number(old)
            if self.cfg.keep_published and (old / PUBLISHED).exists():
                continue
            if old.name in targets:  # a kept rollback's target: what it was rolled back to
                continue
            if old not in kept and number is not None and oldest is not None and number < oldest:
                shutil.rmtree(old, ignore_errors=True)


def _rollback_targets(kept: list[Path]) -> set[str]:
    """Ids the kept checkpoints were rolled back to (their meta.json `rollback.to`)."""
    targets = set()
    for path in kept:
        try:
            rolled = json.loads((path / "meta.json").read_text()).get("rollback") or {}
        except (OSError, ValueError, AttributeError):
            continue  # unreadable: judged when read, not here
        if isinstance(rolled, dict) and isinstance(rolled.get("to"), str):
            targets.add(rolled["to"])
    return targets


def _number(path: Path) -> int | None:
    digits = path.name.removeprefix(PREFIX).removesuffix(DAMAGED)
    return int(digits) if digits.isdigit() else None


def complete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints that finished writing (damaged ones set aside excluded), oldest first."""
    paths = [p for p in Path(directory).glob(f"{PREFIX}*") if p.name.removeprefix(PREFIX).isdigit()]
    return sorted(p for p in paths if (p / "meta.json").exists())


def read(path: Path) -> Checkpoint:
    """One checkpoint, whole; raises whatever reading it raises."""
    meta = json.loads((path / "meta.json").read_text())
    if not isinstance(meta, dict) or meta.get("id") != path.name:
        raise CheckpointError(f"{path.name}/meta.json does not describe this checkpoint")
    weights = load_file(str(path / "weights.safetensors"))
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name}/state.pt holds no state")
    return Checkpoint(meta["id"], path, meta, weights, state)


def load_latest(directory: Path) -> Checkpoint | None:
    """The newest readable checkpoint, for tools and tests (nothing is renamed)."""
    for path in reversed(complete_checkpoints(directory)):
        try:
            return read(path)
        except Exception as exc:
            log.warning("checkpoint unreadable", checkpoint=path.name, error=str(exc)[:300])
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
