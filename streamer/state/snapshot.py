"""What a checkpoint holds for a job of one or many ranks, and how it is shared out again.

Shared by every rank (identical by construction): trainable weights, optimizer state, step.
Per rank (a shard): its replay reservoir, evaluator, label set, RNG, and its ledger
(counters, id digest, offsets). `meta.json` sums the counters and merges the offsets over
all ranks, so a person or a test reads the job's totals in one place.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import structlog
import torch

from streamer.learning.distributed import World
from streamer.state.checkpoint import DAMAGED, Checkpointer, CheckpointError
from streamer.state.ledger import LedgerShard

log = structlog.get_logger(__name__)


class Shard(TypedDict):
    """One rank's part of a checkpoint (the shared weights and optimizer travel apart)."""

    learner: dict[str, Any]
    replay: dict[str, Any] | None  # None: a rank new to the job starts it empty
    evaluator: dict[str, Any] | None
    ledger: LedgerShard
    fingerprint: str  # of the rank's trainable weights: equal everywhere, or they diverged


@dataclass(frozen=True)
class Shared:
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


@dataclass(frozen=True)
class Written:
    id: str | None
    error: str | None = None  # why it was not written


@dataclass(frozen=True)
class Restored:
    id: str
    shard: Shard  # this rank's
    shared: Shared
    meta: dict[str, Any]
    shards: list[Shard] | None = None  # every rank's, on rank 0 while sharing out


def write(
    checkpointer: Checkpointer, shards: list[Shard], shared: Shared, extra_meta: dict
) -> Written:
    """Rank 0: the job's checkpoint from every rank's shard."""
    prints = {shard["fingerprint"] for shard in shards}
    if len(prints) > 1:  # the update was not the same everywhere: keep the last good one
        return Written(None, f"replicas diverged: trainable weights differ across ranks {prints}")
    state, meta = merge(shards, shared.optimizer, extra_meta)
    try:
        return Written(checkpointer.save(shared.weights, state, meta))
    except CheckpointError as exc:
        return Written(None, str(exc))


def detached(tree: Any, clone: bool = True) -> Any:
    """A copy of a state tree that training can no longer change: containers rebuilt, tensors
    on a device copied to host memory (pinned, asynchronously: wait on `host_ready` before
    reading them), host tensors cloned unless `clone` is False (the replay's pixels, which
    are never written in place). Numbers, strings and bytes are immutable: shared."""
    if isinstance(tree, torch.Tensor):
        if tree.device.type != "cpu":
            host = torch.empty(tree.shape, dtype=tree.dtype, pin_memory=True)
            return host.copy_(tree.detach(), non_blocking=True)
        return tree.detach().clone() if clone else tree
    if isinstance(tree, dict):
        return {k: detached(v, clone) for k, v in tree.items()}
    if isinstance(tree, list):
        return [detached(v, clone) for v in tree]
    if isinstance(tree, tuple):
        return tuple(detached(v, clone) for v in tree)
    return tree


def host_ready(device: torch.device) -> Callable[[], None]:
    """After `detached` on a CUDA device: a wait (for another thread) until its copies landed."""
    if device.type != "cuda":
        return lambda: None
    event = torch.cuda.Event()
    event.record()
    return event.synchronize


def fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """A digest of trainable weights: equal on every rank, or the replicas diverged."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def merge(shards: list[Shard], optimizer: dict[str, Any], extra_meta: dict) -> tuple[dict, dict]:
    """Every rank's shard -> (state to save, meta). Offsets: the furthest any rank holds."""
    offsets: dict[str, int] = {}
    counts: Counter[str] = Counter()
    for shard in shards:
        for key, offset in shard["ledger"]["offsets"].items():
            offsets[key] = max(offset, offsets.get(key, -1))
        counts.update(shard["ledger"]["counts"])
    meta = {
        **extra_meta,
        "offsets": dict(sorted(offsets.items())),
        "counts": dict(counts),
        "digest": str(sum(int(s["ledger"]["digest"]) for s in shards) % 2**64),
        "lineage": shards[0]["ledger"]["lineage"],
        "world_size": len(shards),
        "ranks": [{"counts": dict(s["ledger"]["counts"]), "offsets": s["ledger"]["offsets"],
                   "weights": s["fingerprint"]} for s in shards],
    }  # fmt: skip
    state = {"optimizer": optimizer, "ranks": [_stored(s) for s in shards]}
    return state, meta


def split(state: dict[str, Any], meta: dict[str, Any], world_size: int) -> list[Shard]:
    """A checkpoint's shards for a job of world_size ranks.

    The same world size gets its own shards back. Otherwise the counters and id digests of
    shards without a rank fold into rank 0 (totals stay exact), their replay and evaluator
    state is dropped, and ranks without a shard start those empty. Every rank gets every
    offset: a partition resumes where its last owner stopped, whoever owns it now.
    """
    stored: list[dict[str, Any]] = [dict(s) for s in state["ranks"]]
    if len(stored) != world_size:
        log.warning("world size changed since the checkpoint; replay and evaluator state of "
                    "missing ranks start empty", saved=len(stored), now=world_size)  # fmt: skip
    first = dict(stored[0]["ledger"])
    for extra in stored[world_size:]:
        first["counts"] = dict(Counter(first["counts"]) + Counter(extra["ledger"]["counts"]))
        first["digest"] = str((int(first["digest"]) + int(extra["ledger"]["digest"])) % 2**64)
    stored[0]["ledger"] = first
    shards: list[Shard] = []
    for rank in range(world_size):
        shard = stored[rank] if rank < len(stored) else _fresh(stored[0])
        ledger = {**shard["ledger"], "offsets": dict(meta["offsets"])}
        shards.append({**shard, "ledger": ledger, "fingerprint": ""})  # type: ignore[typeddict-item]
    return shards


def share_out(
    world: World, checkpointer: Checkpointer, apply: Callable[[Restored], None]
) -> Restored | None:
    """Restore the newest usable checkpoint on every rank, or None if there is none.

    Rank 0 reads them newest first; one that cannot be read or split is set aside for the
    next older one (in a world of one, also one that cannot be applied). If there were
    checkpoints and none is usable, CheckpointError: starting from the base model would
    resume at offsets the group committed for a model that is gone.
    """
    found = _first_usable(checkpointer, world, apply) if world.is_root else None
    told = found if not isinstance(found, Restored) else (found.id, found.meta)
    summary = world.broadcast(told)  # every rank: None (fresh), why it failed, or (id, meta)
    if summary is None:
        return None
    if isinstance(summary, str):
        raise CheckpointError(summary)
    if not world.active:
        return found  # type: ignore[return-value]  # applied while it was chosen
    shards = found.shards if isinstance(found, Restored) else None
    shard = world.scatter(shards)
    shared = world.broadcast(found.shared if isinstance(found, Restored) else None)
    restored = Restored(summary[0], shard, shared, summary[1])
    apply(restored)
    return restored


def _first_usable(
    checkpointer: Checkpointer, world: World, apply: Callable[[Restored], None]
) -> Restored | str | None:
    checkpointer.discard_partial()
    for checkpoint in checkpointer.readable():
        try:
            shards = split(checkpoint.state, checkpoint.meta, world.size)
            shared = Shared(checkpoint.weights, checkpoint.state["optimizer"])
            restored = Restored(checkpoint.id, shards[0], shared, checkpoint.meta, shards)
            if not world.active:
                apply(restored)
            return restored
        except Exception as exc:  # a parseable but unusable checkpoint is damaged too
            checkpointer.set_aside(checkpoint.path, f"{type(exc).__name__}: {exc}")
    damaged = sorted(p.name for p in checkpointer.cfg.dir.glob(f"*{DAMAGED}"))
    if damaged:
        return (f"no usable checkpoint in {checkpointer.cfg.dir} (set aside: "
                f"{', '.join(damaged[-3:])}); refusing to start from the base model over "
                "committed offsets. Move the directory away to start afresh.")  # fmt: skip
    return None


def _stored(shard: Shard) -> dict[str, Any]:
    return {k: v for k, v in shard.items() if k != "fingerprint"}


def _fresh(first: dict[str, Any]) -> dict[str, Any]:
    """A rank the checkpoint did not have: the shared learner state, nothing of its own."""
    learner = {**first["learner"], "samples": 0, "skipped_nonfinite": 0}
    ledger = {"offsets": {}, "counts": {}, "digest": "0", "lineage": first["ledger"]["lineage"]}
    return {"learner": learner, "replay": None, "evaluator": None, "ledger": ledger}
