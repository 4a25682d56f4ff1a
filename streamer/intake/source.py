"""Where records come from: the Source contract, and an in-memory Source for fast tests.

KafkaSource (kafka_source.py) is the production implementation; both keep this contract:

- `start(resume)`: begin delivering. For every partition it takes on, the source asks
  `resume(partition, group_commit)` where to start (None: the reset policy); the ledger
  answers, from its offsets and the group's committed offset.
- `get(n, timeout)`: up to n Items, each record once, in offset order within a partition,
  decoded (`pair`) or refused (`error`). Nothing of a partition is returned after it was
  given up. Raises SourceFailed once the source cannot go on (`failure()` says why).
- `pending_revocation()`: partitions about to leave; the caller checkpoints and commits
  them, then sets the revocation's `done`.
- `commit(offsets, metadata)`: commit next-offsets of accounted records; False when the
  broker refuses (the next checkpoint retries).
- `stats()`: figures for health and metrics, cheap and safe from any thread.
- `close()`: stop; no call after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from streamer.records import DecodeError, Pair, Partition, RawRecord


@dataclass(frozen=True, slots=True)
class Item:
    """One consumed record, decoded (`pair`) or refused (`error`)."""

    raw: RawRecord
    pair: Pair | None = None
    error: DecodeError | None = None

    @property
    def partition(self) -> Partition:
        return (self.raw.topic, self.raw.partition)


@dataclass(frozen=True, slots=True)
class GroupCommit:
    """A partition's committed offset in the consumer group, and who committed it."""

    offset: int
    metadata: str = ""


@dataclass
class Revocation:
    """Partitions about to be given up; the trainer sets `done` once they are committed."""

    partitions: set[Partition]
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class SourceStats:
    assigned: frozenset[Partition] = frozenset()
    highwater: dict[Partition, int] = field(default_factory=dict)  # log end per partition
    buffered: int = 0  # fetched, not yet returned by get()
    paused: bool = False  # backpressure
    last_poll: float | None = None  # wall-clock time of the last successful poll
    rebalances: int = 0
    joined: bool = False  # has an assignment (a group member, or assigned its share)
    disconnected_since: float | None = None  # wall-clock time no broker was reachable from


class SourceFailed(RuntimeError):
    """The source cannot go on (a worker died, polling keeps failing); nothing to commit."""


Resume = Callable[[Partition, GroupCommit | None], int | None]
Decode = Callable[[RawRecord], Pair]


class Source(Protocol):
    def start(self, resume: Resume) -> None: ...

    def get(self, max_items: int, timeout: float) -> list[Item]: ...

    def pending_revocation(self) -> Revocation | None: ...

    def commit(self, offsets: dict[Partition, int], metadata: str) -> bool: ...

    def failure(self) -> str | None: ...

    def stats(self) -> SourceStats: ...

    def close(self) -> None: ...


def to_item(raw: RawRecord, decode: Decode) -> Item:
    try:
        return Item(raw, pair=decode(raw))
    except DecodeError as exc:
        return Item(raw, error=exc)


class MemorySource:
    """Partitions of records held in memory, decoded on the caller's thread. A partition's
    records have offsets 0, 1, 2, ... in order (`records` must be given so).

    `group` plays the consumer group's committed offsets; `revoke` and `fail` script the
    events a broker would cause.
    """

    def __init__(
        self,
        records: Iterable[RawRecord],
        decode: Decode,
        group: dict[Partition, GroupCommit] | None = None,
    ) -> None:
        self.logs: dict[Partition, list[RawRecord]] = {}
        for raw in records:
            self.logs.setdefault((raw.topic, raw.partition), []).append(raw)
        self.group = dict(group or {})
        self.commits: list[tuple[dict[Partition, int], str]] = []
        self.refuse_commits = False
        self._decode = decode
        self._positions: dict[Partition, int] = {}
        self._revocation: Revocation | None = None
        self._failure: str | None = None
        self._rebalances = 0
        self.closed = False

    def start(self, resume: Resume) -> None:
        self.assign(set(self.logs), resume)

    def assign(self, partitions: set[Partition], resume: Resume) -> None:
        for p in sorted(partitions):
            target = resume(p, self.group.get(p))
            self._positions[p] = 0 if target is None else target  # earliest
        self._rebalances += 1

    def get(self, max_items: int, timeout: float) -> list[Item]:
        if self._failure is not None:
            raise SourceFailed(self._failure)
        items: list[Item] = []
        for p in sorted(self._positions):
            log = self.logs.get(p, [])
            while len(items) < max_items and self._positions[p] < len(log):
                items.append(to_item(log[self._positions[p]], self._decode))
                self._positions[p] += 1
        if not items:
            time.sleep(min(timeout, 0.01))  # as a consumer would wait, without spinning
        return items

    def revoke(self, partitions: set[Partition]) -> Revocation:
        self._revocation = Revocation(set(partitions))
        return self._revocation

    def give_up(self, revocation: Revocation) -> None:
        """After the trainer is done (or the deadline passed): the partitions leave."""
        for p in revocation.partitions:
            self._positions.pop(p, None)
        self._revocation = None

    def pending_revocation(self) -> Revocation | None:
        return self._revocation

    def commit(self, offsets: dict[Partition, int], metadata: str) -> bool:
        if self.refuse_commits:
            return False
        self.commits.append((dict(offsets), metadata))
        self.group.update({p: GroupCommit(o, metadata) for p, o in offsets.items()})
        return True

    def fail(self, why: str) -> None:
        self._failure = why

    def failure(self) -> str | None:
        return self._failure

    def stats(self) -> SourceStats:
        ends = {p: len(log) for p, log in self.logs.items()}
        waiting = sum(ends[p] - pos for p, pos in self._positions.items() if p in ends)
        return SourceStats(frozenset(self._positions), ends, waiting, False, time.time(),
                           self._rebalances, bool(self._rebalances))  # fmt: skip

    def close(self) -> None:
        self.closed = True
