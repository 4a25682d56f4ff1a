"""The accuracy matrix of continual learning and what it says about forgetting.

Rows: `base` (a[0], the base model before any training) and one row per closed window i
(a[i][j]: accuracy on window j's probes when the stream moved on from window i); `latest` is
row T, the most recent evaluation. Every cell keeps the number of probes it was measured on;
a cell on fewer than `min_probes` is *not measured*: it enters no mean and shows blank.

A cell a[i][j] is a *forward* cell when training on window j had not started by the close of
row i (measured before any training on j: zero-shot transfer). Pinned windows (the reference
probe set) are never trained and never forward: they measure retention of the base.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cell:
    accuracy: float
    probes: int  # probes it was measured on


Row = dict[str, Cell]


class AccuracyMatrix:
    def __init__(self, max_windows: int, min_probes: int = 1, max_curve: int = 10_000) -> None:
        self.max_windows = max_windows
        self.min_probes = min_probes
        self.max_curve = max_curve
        self.windows: list[str] = []  # tracked, in order of arrival
        self.pinned: set[str] = set()  # never dropped (the fixed reference probe set)
        self.started: list[str] = []  # windows whose training began, in order
        self.base: Row = {}  # a[0]: the base model (step 0, or later for windows new then)
        self.rows: dict[str, Row] = {}  # closed rows, by the window they close
        self.latest: Row = {}
        self.curve: list[tuple[int, float]] = []  # periodic evaluations: (samples, mean)
        self._auc = [0.0, 0.0]  # sum of mean accuracy x samples since the last one; samples
        self._last_periodic = 0  # samples at the last periodic evaluation

    def track(self, window: str, pinned: bool = False) -> list[str]:
        """Start tracking a window; returns the windows dropped to keep the bound."""
        if window in self.windows:
            return []
        self.windows.append(window)
        if pinned:
            self.pinned.add(window)
        movable = [w for w in self.windows if w not in self.pinned]
        dropped = movable[: -self.max_windows]
        self.windows = [w for w in self.windows if w not in dropped]
        self.started = [w for w in self.started if w not in dropped]
        for old in dropped:
            self.rows.pop(old, None)
            for row in (self.base, self.latest, *self.rows.values()):
                row.pop(old, None)
        return dropped

    def start(self, window: str) -> None:
        """Training on `window` begins: from now on its cells are not forward cells."""
        if window in self.windows and window not in self.started:
            self.started.append(window)

    def measured(self, cell: Cell | None) -> bool:
        return cell is not None and cell.probes >= self.min_probes

    def is_forward(self, row: str, window: str) -> bool:
        """Was a[row][window] measured before any training on `window`?"""
        if window in self.pinned:
            return False
        if window not in self.started or row not in self.started:
            return True
        return self.started.index(window) > self.started.index(row)

    def record(self, accuracy: Mapping[str, Cell], samples: int, periodic: bool) -> None:
        """An evaluation: row T now. Only periodic ones enter A_auc, weighted by the samples
        trained since the previous periodic one (boundary and final evaluations do not; a
        periodic one with nothing measured on enough probes adds nothing, its span is lost)."""
        self.latest = {w: c for w, c in accuracy.items() if w in self.windows}
        if not periodic:
            return
        weight, self._last_periodic = samples - self._last_periodic, samples
        mean = self.a_last()
        if mean == mean and weight > 0:  # not NaN: something measured
            self._auc = [self._auc[0] + mean * weight, self._auc[1] + weight]
            self.curve.append((samples, mean))
            del self.curve[: -self.max_curve]

    def needs_base(self, window: str) -> bool:
        """No step-0 cell measured on enough probes yet for this tracked window."""
        return window in self.windows and not self.measured(self.base.get(window))

    def record_base(self, accuracy: Mapping[str, Cell]) -> None:
        """The base model's cells: at step 0, and later for windows that had too few probes
        then (the base model does not change, so only the probe sample differs)."""
        for window, cell in accuracy.items():
            if self.needs_base(window):
                self.base[window] = cell

    def close(self, window: str) -> None:
        """The stream moved on from `window`: freeze the latest evaluation as its row."""
        if window in self.windows:
            self.rows[window] = dict(self.latest)

    def counted(self) -> dict[str, float]:
        """Row T's cells that enter the means: measured, and trained on or pinned."""
        return {
            w: c.accuracy
            for w, c in self.latest.items()
            if self.measured(c) and (w in self.pinned or w in self.started)
        }

    def left_out(self) -> dict[str, int]:
        """Windows of row T measured on too few probes: their probe counts."""
        return {w: c.probes for w, c in self.latest.items() if not self.measured(c)}

    def a_last(self) -> float:
        """Mean accuracy now over the windows trained on so far and the pinned ones."""
        return _mean(self.counted().values())

    def a_auc(self) -> float:
        """Anytime accuracy: periodic evaluations' mean accuracy, weighted by samples."""
        return self._auc[0] / self._auc[1] if self._auc[1] else float("nan")

    def _past(self) -> Iterable[Row]:
        return (self.base, *self.rows.values())

    def forgetting(self) -> dict[str, float]:
        """max over earlier rows (step 0 included) of a[i][j], minus a[T][j], for every
        window j that is pinned or was trained before the current one."""
        current = self.started[-1] if self.started else None
        out = {}
        for j, now in self.counted().items():
            past = [row[j].accuracy for row in self._past() if self.measured(row.get(j))]
            if past and j != current:
                out[j] = max(past) - now
        return out

    def average_forgetting(self) -> float:
        return _mean(self.forgetting().values())

    def bwt(self) -> float:
        """Backward transfer: mean_j (a[T][j] − a[j][j]) over closed windows."""
        now = self.counted()
        return _mean(
            now[j] - row[j].accuracy
            for j, row in self.rows.items()
            if j in now and self.measured(row.get(j))
        )

    def forward_transfer(self) -> dict[str, float]:
        """a[j−1][j] − a[0][j]: what training up to window j−1 did for j before seeing it."""
        out = {}
        for before, j in zip(self.started, self.started[1:], strict=False):
            cell, base = self.rows.get(before, {}).get(j), self.base.get(j)
            if self.measured(cell) and self.measured(base) and self.is_forward(before, j):
                out[j] = cell.accuracy - base.accuracy
        return out

    def average_forward_transfer(self) -> float:
        return _mean(self.forward_transfer().values())

    def retention(self) -> dict[str, float]:
        """Pinned windows (the base's knowledge): accuracy now minus at step 0."""
        now = self.counted()
        return {
            w: now[w] - self.base[w].accuracy
            for w in sorted(self.pinned)
            if w in now and self.measured(self.base.get(w))
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "windows": list(self.windows),
            "pinned": sorted(self.pinned),
            "started": list(self.started),
            "base": _row_state(self.base),
            "rows": {k: _row_state(v) for k, v in self.rows.items()},
            "latest": _row_state(self.latest),
            "curve": [list(p) for p in self.curve],
            "auc": list(self._auc),
            "last_periodic": self._last_periodic,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.windows = list(state["windows"])
        self.pinned = set(state["pinned"])
        self.started = list(state["started"])
        self.base = _row_from_state(state["base"])
        self.rows = {k: _row_from_state(v) for k, v in state["rows"].items()}
        self.latest = _row_from_state(state["latest"])
        self.curve = [(int(n), float(a)) for n, a in state["curve"]]
        self._auc = [float(v) for v in state["auc"]]
        self._last_periodic = int(state["last_periodic"])


class ClassForgetting:
    """Per-class forgetting (Si-Blurry, whose windows mix classes): a class's best accuracy at
    step 0 or at a row's close, minus its accuracy now. Classes are keyed by label; only the
    `max_classes` most recently evaluated are kept (older ones leave every figure)."""

    def __init__(self, max_classes: int, min_probes: int = 1) -> None:
        self.max_classes = max_classes
        self.min_probes = min_probes
        self.best: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self._recent: list[str] = []  # least recently evaluated first

    def record(self, accuracy: Mapping[str, Cell]) -> None:
        self.latest = {c: v.accuracy for c, v in accuracy.items() if v.probes >= self.min_probes}
        self._recent = [c for c in self._recent if c not in self.latest] + list(self.latest)
        for old in self._recent[: -self.max_classes]:
            self.best.pop(old, None)
            self.latest.pop(old, None)
        del self._recent[: -self.max_classes]

    def close(self) -> None:
        """A row closed (or step 0 was measured): its class accuracies become candidates."""
        for c, accuracy in self.latest.items():
            self.best[c] = max(self.best.get(c, accuracy), accuracy)

    def forgetting(self) -> dict[str, float]:
        """Classes once learned (best above 0) and measured now."""
        return {c: self.best[c] - a for c, a in self.latest.items() if self.best.get(c, 0) > 0}

    def average(self) -> float:
        return _mean(self.forgetting().values())

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "latest": dict(self.latest), "recent": list(self._recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {k: float(v) for k, v in state["best"].items()}
        self.latest = {k: float(v) for k, v in state["latest"].items()}
        self._recent = list(state["recent"])


def _row_state(row: Row) -> dict[str, list]:
    return {w: [c.accuracy, c.probes] for w, c in row.items()}


def _row_from_state(state: Mapping[str, list]) -> Row:
    return {w: Cell(float(a), int(n)) for w, (a, n) in state.items()}


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
