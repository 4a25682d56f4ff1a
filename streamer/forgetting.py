"""The accuracy matrix of continual learning and what it says about forgetting.

a[i][j] = accuracy on window j's probes after training through window i (a closed row);
`latest` is the most recent evaluation, the row of the window being trained now (T).
"""

from __future__ import annotations

from typing import Any


class AccuracyMatrix:
    def __init__(self, max_windows: int, max_curve: int = 10_000) -> None:
        self.max_windows = max_windows
        self.max_curve = max_curve
        self.windows: list[str] = []  # tracked, in order of arrival
        self.pinned: set[str] = set()  # never dropped (the fixed reference probe set)
        self.rows: dict[str, dict[str, float]] = {}
        self.latest: dict[str, float] = {}
        self.curve: list[tuple[int, float]] = []  # (samples trained, mean accuracy)
        self._auc_sum = 0.0
        self._auc_n = 0

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
        for old in dropped:
            self.rows.pop(old, None)
            self.latest.pop(old, None)
            for row in self.rows.values():
                row.pop(old, None)
        return dropped

    def record(self, accuracy: dict[str, float], samples: int) -> None:
        """A periodic evaluation: accuracy per window now."""
        self.latest = {w: a for w, a in accuracy.items() if w in self.windows}
        if not self.latest:
            return
        mean = sum(self.latest.values()) / len(self.latest)
        self._auc_sum += mean
        self._auc_n += 1
        self.curve.append((samples, mean))
        del self.curve[: -self.max_curve]

    def close(self, window: str) -> None:
        """Training through `window` is over: freeze the latest evaluation as its row."""
        if window in self.windows:
            self.rows[window] = dict(self.latest)

    def a_last(self) -> float:
        """Mean accuracy over tracked windows now."""
        return _mean(self.latest.values())

    def a_auc(self) -> float:
        """Mean of the accuracy measured every `eval_every` samples (anytime accuracy)."""
        return self._auc_sum / self._auc_n if self._auc_n else float("nan")

    def forgetting(self) -> dict[str, float]:
        """max_{i<T} a[i][j] − a[T][j] for every closed window j still evaluated."""
        out = {}
        for j in self.rows:
            past = [row[j] for row in self.rows.values() if j in row]
            if past and j in self.latest:
                out[j] = max(past) - self.latest[j]
        return out

    def average_forgetting(self) -> float:
        return _mean(self.forgetting().values())

    def bwt(self) -> float:
        """Backward transfer: mean_j (a[T][j] − a[j][j]) over closed windows."""
        return _mean(
            self.latest[j] - row[j] for j, row in self.rows.items() if j in row and j in self.latest
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "windows": list(self.windows),
            "pinned": sorted(self.pinned),
            "rows": {k: dict(v) for k, v in self.rows.items()},
            "latest": dict(self.latest),
            "curve": [list(p) for p in self.curve],
            "auc": [self._auc_sum, self._auc_n],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.windows = list(state["windows"])
        self.pinned = set(state["pinned"])
        self.rows = {k: dict(v) for k, v in state["rows"].items()}
        self.latest = dict(state["latest"])
        self.curve = [(int(n), float(a)) for n, a in state["curve"]]
        self._auc_sum, self._auc_n = float(state["auc"][0]), int(state["auc"][1])


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
