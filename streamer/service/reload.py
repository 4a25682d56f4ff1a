"""Live config: notice a changed config file, validate it whole, accept it or keep the old.

Kubernetes updates a mounted ConfigMap by swapping a `..data` symlink, so the file is read
through its path and compared by content hash, polled every few seconds (and at once on
SIGHUP). A change to a restart-only field rejects the whole reload: the daemon keeps the
config it has, and says which fields need a restart.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamer.config import Settings, load_settings
from streamer.config.text import describe_errors

# Fields that take effect at the next step boundary; every other field needs a restart.
LIVE_FIELDS = (
    "learner.lr", "learner.weight_decay", "learner.betas", "learner.grad_clip",
    "learner.steps_per_batch", "learner.replay_per_step", "learner.rehearse.per_update",
    "evaluation.eval_every", "evaluation.detectors",
    "evaluation.misalignment_threshold", "evaluation.misalignment_window",
    "evaluation.min_probes", "evaluation.min_class_probes", "evaluation.blame_margin",
    "evaluation.collapse_threshold", "evaluation.knn_k", "evaluation.attribution_every",
    "checkpoint.every_steps", "checkpoint.every_seconds", "checkpoint.keep",
    "logging.level", "logging.record_error_interval_seconds",
    "dead_letter.max_share", "dead_letter.window", "metrics.stall_seconds",
)  # fmt: skip


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): data}


def diff(old: Settings, new: Settings) -> dict[str, tuple[Any, Any]]:
    """Changed fields, dotted, with (old, new) values to show: secrets compare by value but
    show masked."""
    a, b = flatten(old.model_dump()), flatten(new.model_dump())
    shown_a, shown_b = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return {k: (shown_a.get(k), shown_b.get(k)) for k in changed}


def restart_only(changes: dict[str, Any]) -> list[str]:
    return [k for k in changes if not any(k == f or k.startswith(f + ".") for f in LIVE_FIELDS)]


class ReloadRejected(ValueError):
    """The new config is invalid or changes restart-only fields; `problems` name them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ReloadOutcome:
    """A reload's result: the new config and its changes, or the problems that refused it."""

    settings: Settings | None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        overrides: dict[str, Any],
        poll_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.overrides = dict(overrides)
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._requested = threading.Event()  # SIGHUP
        self._last_poll = clock()
        self._hash = self._content_hash()

    def request(self) -> None:
        self._requested.set()

    def changed(self) -> bool:
        """Asked for (SIGHUP), or the file's content differs; polled at most every poll_seconds."""
        if self._requested.is_set():
            self._requested.clear()
            self._hash = self._content_hash()
            return True
        if self._clock() - self._last_poll < self.poll_seconds:
            return False
        self._last_poll = self._clock()
        current = self._content_hash()
        if current == self._hash:
            return False
        self._hash = current
        return True

    def load(self, current: Settings) -> tuple[Settings, dict[str, tuple[Any, Any]]]:
        """The new config and its changes, or ReloadRejected naming every problem."""
        try:
            new = load_settings(self.path, self.overrides)
        except ValidationError as exc:
            raise ReloadRejected(describe_errors(exc)) from exc
        except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable file, invalid YAML
            raise ReloadRejected([f"{self.path}: {exc}"]) from exc
        changes = diff(current, new)
        fixed = restart_only(changes)
        if fixed:
            raise ReloadRejected([f"{k}: needs a restart" for k in fixed])
        return new, changes

    def outcome(self, current: Settings) -> ReloadOutcome:
        try:
            new, changes = self.load(current)
        except ReloadRejected as exc:
            return ReloadOutcome(None, problems=exc.problems)
        return ReloadOutcome(new, changes)

    def _content_hash(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None
