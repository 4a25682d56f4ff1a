"""Broker outages are ridden out, never fatal: which errors mean "the cluster cannot be reached
right now", whether a client holds a live connection, and how long it has not.

A maintenance window, a rolling restart or a network partition leaves the data where it is;
the daemon waits for it (not ready, still live) and resumes from its checkpoint's offsets.
Errors that mean the data cannot be read (an unsupported codec, settings refused, a record
kafka-python cannot parse) are not connectivity and still fail loudly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from kafka import KafkaConsumer
from kafka import errors as E

log = structlog.get_logger(__name__)

PERMANENT = (E.UnsupportedCodecError, E.KafkaConfigurationError)  # retrying never helps
# The cluster is not reachable, or is moving leadership around: waiting is the remedy.
CONNECTIVITY = (
    E.KafkaConnectionError, E.KafkaTimeoutError, E.NodeNotReadyError, E.RequestTimedOutError,
    E.NetworkExceptionError, E.BrokerNotAvailableError, E.LeaderNotAvailableError,
    E.NotLeaderForPartitionError, E.CoordinatorNotAvailableError, E.NotCoordinatorError,
    E.CoordinatorLoadInProgressError, E.NotEnoughReplicasError,
    E.NotEnoughReplicasAfterAppendError,
)  # fmt: skip


def is_connectivity(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTIVITY)


def broker_connected(consumer: KafkaConsumer) -> bool:
    """True while the client holds a live connection to some broker of the cluster.

    kafka-python reconnects on its own and `poll` returns nothing while it cannot, so the
    connection state is the only sign of an outage; it has no public view of it (its
    `connection-count` metric also counts connections still being attempted)."""
    client = consumer._client
    return any(client.connected(b.node_id) for b in client.cluster.brokers())


class Outage:
    """Since when no broker is reachable (None: connected), and the retry back-off."""

    def __init__(
        self, backoff: tuple[float, float], clock: Callable[[], float] = time.time
    ) -> None:
        self._first, self._longest = backoff
        self._delay = self._first
        self._clock = clock
        self.since: float | None = None  # wall-clock time the last connection was lost

    def observe(self, connected: bool, cause: str = "") -> None:
        if connected and self.since is not None:
            log.info("broker reachable again", after_seconds=round(self._clock() - self.since))
            self.since, self._delay = None, self._first
        elif not connected and self.since is None:
            self.since = self._clock()
            log.warning("broker unreachable; retrying until it returns", error=cause[:300])

    def seconds(self, now: float | None = None) -> float:
        """How long no broker has been reachable (0 while connected)."""
        if self.since is None:
            return 0.0
        return max(0.0, (self._clock() if now is None else now) - self.since)

    def wait_out(self, cause: str, stop: threading.Event) -> None:
        """Note the outage, then wait the next back-off (or until stopped)."""
        self.observe(False, cause)
        stop.wait(self.next_delay())

    def next_delay(self) -> float:
        """The wait before the next attempt: doubling from the first delay to the longest."""
        delay, self._delay = self._delay, min(self._delay * 2, self._longest)
        return delay
