"""What has been accounted for: offsets, counts and a digest of record ids, and where each
partition resumes.

A record's offset advances here only once it is accounted for (trained, held out as a probe,
or dead-lettered). The ledger goes into every checkpoint with the model, and offsets are
committed to the group only once that checkpoint is durable, with metadata naming it and
this ledger's lineage (one per chain of checkpoints).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from typing import TypedDict

import structlog

from streamer.intake.source import GroupCommit
from streamer.records import Partition, id_hash

log = structlog.get_logger(__name__)
DIGEST_MOD = 2**64


class LedgerShard(TypedDict):
    """A ledger as a checkpoint stores it (offsets keyed "topic:partition")."""

    offsets: dict[str, int]
    counts: dict[str, int]
    digest: str
    lineage: str


def offset_keys(offsets: dict[Partition, int]) -> dict[str, int]:
    """{(topic, partition): next offset} -> {"topic:partition": next offset}, sorted."""
    return {f"{t}:{p}": o for (t, p), o in sorted(offsets.items())}


def parse_offsets(keys: dict[str, int]) -> dict[Partition, int]:
    return {(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): int(o) for k, o in keys.items()}


class Ledger:
    def __init__(self, lineage: str | None = None) -> None:
        self.lineage = lineage or uuid.uuid4().hex[:16]
        self.offsets: dict[Partition, int] = {}  # next offset per partition, accounted for
        self.counts: Counter[str] = Counter()  # trained, probes, dead_lettered, invalid:<r>
        self.digest = 0  # sum of id hashes of trained and probe records, mod 2**64
        self._dirty: set[Partition] = set()  # advanced since the last checkpoint
        self._committed: dict[Partition, int] = {}  # our commits the group accepted
        self.fell_back = False  # restored past an unreadable newer checkpoint

    # -- accounting ----------------------------------------------------------------------
    def advance(self, partition: Partition, offset: int) -> None:
        """The record at `offset` is accounted for."""
        self.offsets[partition] = offset + 1
        self._dirty.add(partition)

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] += n

    def add_ids(self, sample_ids: Iterable[str]) -> None:
        for sample_id in sample_ids:
            self.digest = (self.digest + id_hash(sample_id)) % DIGEST_MOD

    @property
    def accounted(self) -> int:
        return self.counts["trained"] + self.counts["probes"] + self.counts["dead_lettered"]

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def touches(self, partitions: Iterable[Partition]) -> bool:
        return not self._dirty.isdisjoint(partitions)

    def checkpointed(self, at: dict[Partition, int] | None = None) -> None:
        """A checkpoint is durable. `at`: the offsets it holds (taken at an earlier step
        boundary); a partition that advanced since stays dirty for the next one."""
        if at is None:
            self._dirty.clear()
        else:
            self._dirty = {p for p in self._dirty if self.offsets.get(p) != at.get(p)}

    # -- commits and resumption ----------------------------------------------------------
    def commit_metadata(self, checkpoint_id: str) -> str:
        return f"{checkpoint_id}@{self.lineage}"

    def to_commit(self, owned: Iterable[Partition]) -> dict[Partition, int]:
        owned = set(owned)
        return {p: o for p, o in self.offsets.items() if p in owned}

    def note_commit(self, offsets: dict[Partition, int]) -> None:
        """The group accepted these offsets from us."""
        self._committed.update(offsets)

    @property
    def committed(self) -> dict[Partition, int]:
        return dict(self._committed)

    def resume(self, partition: Partition, group: GroupCommit | None) -> int | None:
        """Where a partition resumes (None: the reset policy). Three rules, in order:

        1. The group's offset went back below our own commit (topic recreated, an operator
           reset, a memory-only broker restarted): follow the broker.
        2. The group's offset was committed by this lineage: our offsets decide. They are
           those of the checkpoint the model was restored from; a commit further on belongs
           to a newer checkpoint that could not be read, so its records are trained again.
           After such a fallback, a commit with no metadata counts as ours too: some
           brokers (Tansu) return none, and a lost record is worse than one trained twice.
        3. Otherwise (another member trained the partition, or an older version committed):
           the further of our offset and the group's.
        """
        ours = self.offsets.get(partition)
        mine = self._committed.get(partition)
        if mine is not None and (group is None or group.offset < mine):
            log.warning("group offset went back; following the broker", partition=partition,
                        committed=group.offset if group else None, ours=mine)  # fmt: skip
            self.offsets.pop(partition, None)
            self._committed.pop(partition, None)
            return group.offset if group else None
        if group is not None and self._ours(group):
            if ours is None or ours < group.offset:
                log.warning("group commit is ahead of the restored checkpoint; training "
                            "those records again", partition=partition, group=group.offset,
                            ours=ours, committed_by=group.metadata)  # fmt: skip
            return ours if ours is not None else 0
        known = [o for o in (ours, group.offset if group else None) if o is not None and o >= 0]
        return max(known) if known else None

    def _ours(self, group: GroupCommit) -> bool:
        return group.metadata.endswith(f"@{self.lineage}") or (
            self.fell_back and not group.metadata
        )

    # -- checkpoint ----------------------------------------------------------------------
    def shard(self) -> LedgerShard:
        return {"offsets": offset_keys(self.offsets), "counts": dict(self.counts),
                "digest": str(self.digest), "lineage": self.lineage}  # fmt: skip

    def restore(self, shard: LedgerShard) -> None:
        self.offsets = parse_offsets(shard["offsets"])
        self.counts = Counter({k: int(v) for k, v in shard["counts"].items()})
        self.digest = int(shard["digest"])
        self.lineage = shard.get("lineage") or self.lineage
        self._dirty.clear()
        self._committed.clear()
