"""`streamer rollback --to ID`: an earlier checkpoint's learning, the newest one's accounting.

The named checkpoint's model, optimizer, replay, evaluator and label state become current;
the newest checkpoint's ledger (offsets, counts, id digest, lineage) and step counter stay.
So no record is trained twice or lost: the records consumed between the two count as seen
but not learned (`meta.json` says how many). It is written as a new checkpoint (atomic, as
every checkpoint), which the daemon restores on its next start, and recorded in its
`meta.json` under `rollback` and in the log. The target is then kept past `checkpoint.keep`
while a kept checkpoint names it (see checkpoint.py's pruning).

Offline (`rollback_offline`, the CLI) it takes the directory's lock, so it refuses while a
daemon runs on it: the daemon would go on from its own memory and its next checkpoint would
silently supersede the rollback. `force` skips that check, for a lock held by a process
known to be gone (its file system cannot release it); the daemon itself calls `rollback`
at a step boundary for `publish.auto_rollback`, holding the lock already.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from streamer.config import CheckpointConfig
from streamer.state.checkpoint import Checkpoint, Checkpointer, CheckpointError, load_latest, read
from streamer.state.lock import DirectoryLock, DirectoryLocked

log = structlog.get_logger(__name__)
KEPT = ("steps", "samples")  # learner counters that keep counting across a rollback


class RollbackError(RuntimeError):
    """The rollback cannot be done as asked; nothing was written."""


def rollback(directory: Path, to: str, reason: str = "operator") -> str:
    """Make checkpoint `to` current in `directory`; the id of the checkpoint written."""
    directory = Path(directory)
    newest = load_latest(directory)
    if newest is None:
        raise RollbackError(f"no readable checkpoint in {directory}")
    try:
        named = read(directory / to)
    except (OSError, ValueError, CheckpointError) as exc:
        raise RollbackError(f"cannot read checkpoint {to} in {directory}: {exc}") from exc
    if named.id == newest.id:
        raise RollbackError(f"{to} is already the newest checkpoint")
    state = _combined(named, newest)
    meta = {k: v for k, v in newest.meta.items() if k not in ("id", "created")}
    unlearned = _count(newest, "trained") - _count(named, "trained")
    meta["quality"] = named.meta.get("quality")
    meta["rollback"] = {"to": named.id, "from": newest.id, "reason": reason, "at": time.time(),
                        "step_to": named.meta.get("step"), "unlearned": unlearned}  # fmt: skip
    cfg = CheckpointConfig.model_validate({**newest.meta["config"]["checkpoint"], "dir": directory})
    written = Checkpointer(cfg).save(named.weights, state, meta)
    log.warning("rolled back", checkpoint=written, to=named.id, replaced=newest.id,
                reason=reason, unlearned=unlearned, offsets=newest.meta.get("offsets"))  # fmt: skip
    return written


def rollback_offline(directory: Path, to: str, force: bool = False) -> str:
    """`rollback` from outside the daemon: refused (RollbackError) while a daemon holds the
    directory, unless `force`."""
    lock = DirectoryLock(directory)
    try:
        lock.acquire()
    except DirectoryLocked as exc:
        if not force:
            raise RollbackError(f"{exc}; stop it first (or roll back with --force)") from None
        log.warning("rolling back despite the lock (--force)", holder=str(exc))
    try:
        return rollback(directory, to)
    finally:
        lock.release()


def roll_back_live(
    directory: Path, to: str, checkpoint: Callable[[], None], restore: Callable[[], str | None]
) -> bool:
    """In the running daemon, at a step boundary: checkpoint (and commit) what was consumed,
    write the rollback checkpoint, restore it. False (logged) when the target is gone."""
    checkpoint()
    try:
        rollback(directory, to, reason="auto: the gate kept refusing")
    except RollbackError as exc:  # keep learning; the gate keeps refusing and alerting
        log.error("automatic rollback impossible", to=to, error=str(exc))
        return False
    restored = restore() is not None
    log.error("rolled back to the last published version", to=to)
    return restored


def _combined(named: Checkpoint, newest: Checkpoint) -> dict[str, Any]:
    old_ranks, new_ranks = named.state["ranks"], newest.state["ranks"]
    if len(old_ranks) != len(new_ranks):
        raise RollbackError(
            f"{named.id} has {len(old_ranks)} ranks, {newest.id} {len(new_ranks)}: "
            "roll back to a checkpoint of the same world size"
        )
    ranks = []
    for old, new in zip(old_ranks, new_ranks, strict=True):
        learner = {**old["learner"], **{k: new["learner"][k] for k in KEPT}}
        ranks.append({**old, "learner": learner, "ledger": new["ledger"]})
    return {**named.state, "ranks": ranks}


def _count(checkpoint: Checkpoint, name: str) -> int:
    return int(checkpoint.meta.get("counts", {}).get(name, 0))
