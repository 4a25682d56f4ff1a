"""What a checkpoint holds for a job of one or many ranks, and how it is shared out again.

Shared by every rank (identical by construction): trainable weights, optimizer state, step.
Per rank (a shard): its replay reservoir, evaluator, label set, RNG, counters, id digest and
offsets. `meta.json` sums the counters and merges the offsets over all ranks, so a person or
a test reads the job's totals in one place.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import structlog
import torch

from streamer.checkpoint import Checkpointer, CheckpointError
from streamer.distributed import World

log = structlog.get_logger(__name__)
Shard = dict[str, Any]


def offset_keys(offsets: dict[tuple[str, int], int]) -> dict[str, int]:
    """{(topic, partition): next offset} -> {"topic:partition": next offset}, sorted."""
    return {f"{t}:{p}": o for (t, p), o in sorted(offsets.items())}


def parse_offsets(keys: dict[str, int]) -> dict[tuple[str, int], int]:
    return {(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): int(o) for k, o in keys.items()}


def write(checkpointer: Checkpointer, shards: list[Shard], extra_meta: dict) -> tuple:
    """Rank 0: the job's checkpoint -> (id, None), or (None, why it was not written)."""
    weights, optimizer = shards[0]["shared"]
    for shard in shards:
        del shard["shared"]
    prints = {shard["fingerprint"] for shard in shards}
    if len(prints) > 1:  # the update was not the same everywhere: keep the last good one
        return None, f"replicas diverged: trainable weights differ across ranks {prints}"
    state, meta = merge(shards, optimizer, extra_meta)
    try:
        return checkpointer.save(weights, state, meta), None
    except CheckpointError as exc:
        return None, str(exc)


def share_out(world: World, checkpointer: Checkpointer) -> tuple[str | None, Shard | None]:
    """Rank 0 reads the newest checkpoint; each rank gets (its id, its shard with the shared
    weights and optimizer in the learner's state), or (None, None) without one."""
    checkpoint = None
    if world.is_root:
        checkpointer.discard_partial()
        checkpoint = checkpointer.latest()
    found = world.broadcast(checkpoint.id if checkpoint else None)
    if found is None:
        return None, None
    shards, shared = None, None
    if checkpoint is not None:
        shards = split(checkpoint.state, checkpoint.meta, world.size)
        shared = (checkpoint.weights, checkpoint.state["optimizer"])
    shard = world.scatter(shards)
    weights, optimizer = world.broadcast(shared)
    shard["learner"] |= {"weights": weights, "optimizer": optimizer}
    return found, shard


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
        for key, offset in shard["offsets"].items():
            offsets[key] = max(offset, offsets.get(key, -1))
        counts.update(shard["counts"])
    meta = {
        **extra_meta,
        "offsets": dict(sorted(offsets.items())),
        "counts": dict(counts),
        "digest": str(sum(int(s["digest"]) for s in shards) % 2**64),
        "world_size": len(shards),
        "ranks": [
            {"counts": dict(s["counts"]), "offsets": s["offsets"], "weights": s["fingerprint"]}
            for s in shards
        ],
    }
    state = {"optimizer": optimizer, "ranks": [_stored(s) for s in shards]}
    return state, meta


def split(state: dict[str, Any], meta: dict[str, Any], world_size: int) -> list[Shard]:
    """A checkpoint's shards for a job of world_size ranks.

    The same world size gets its own shards back. Otherwise the counters and id digests of
    shards without a rank fold into rank 0 (totals stay exact), their replay and evaluator
    state is dropped, and ranks without a shard start those empty. Every rank gets every
    offset: a partition resumes where its last owner stopped, whoever owns it now.
    """
    stored = [dict(s) for s in state["ranks"]]
    if len(stored) != world_size:
        log.warning("world size changed since the checkpoint; replay and evaluator state of "
                    "missing ranks start empty", saved=len(stored), now=world_size)  # fmt: skip
    for extra in stored[world_size:]:
        stored[0]["counts"] = dict(Counter(stored[0]["counts"]) + Counter(extra["counts"]))
        stored[0]["digest"] = str((int(stored[0]["digest"]) + int(extra["digest"])) % 2**64)
    shards = []
    for rank in range(world_size):
        shard = stored[rank] if rank < len(stored) else _fresh(stored[0])
        shard["offsets"] = dict(meta["offsets"])
        shards.append(shard)
    return shards


def _stored(shard: Shard) -> Shard:
    return {k: v for k, v in shard.items() if k != "fingerprint"}


def _fresh(first: Shard) -> Shard:
    """A rank the checkpoint did not have: the shared learner state, nothing of its own."""
    learner = {**first["learner"], "samples": 0, "skipped_nonfinite": 0}
    return {"learner": learner, "replay": None, "evaluator": None, "counts": {}, "digest": "0"}
