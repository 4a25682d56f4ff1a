"""river drift detectors on the learning signals, with a restorable state.

river's ADWIN keeps its window in a compiled helper that cannot be serialised without
pickle, so the state kept is each detector's inputs since its last alarm (bounded by
`history`); a restore replays them into a fresh detector, which rebuilds the same state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from river import drift

from streamer.config import DetectorConfig


def _build(cfg: DetectorConfig) -> drift.ADWIN | drift.PageHinkley:
    if cfg.kind == "adwin":
        return drift.ADWIN(delta=cfg.delta)
    return drift.PageHinkley(
        min_instances=cfg.min_instances, delta=cfg.delta, threshold=cfg.threshold, mode=cfg.mode
    )


class DriftMonitor:
    """One detector per named signal; `update` returns the signals that alarmed."""

    def __init__(self, detectors: Mapping[str, DetectorConfig], history: int) -> None:
        self.cfg = dict(detectors)
        self.history = history
        self._detectors = {name: _build(cfg) for name, cfg in self.cfg.items()}
        self._inputs: dict[str, list[float]] = {name: [] for name in self.cfg}
        self.alarms: dict[str, int] = dict.fromkeys(self.cfg, 0)
        self.in_drift: dict[str, bool] = dict.fromkeys(self.cfg, False)

    def retune(self, detectors: Mapping[str, DetectorConfig]) -> None:
        """New thresholds for the running detectors, keeping what they have seen."""
        for name, cfg in detectors.items():
            detector, old = self._detectors.get(name), self.cfg.get(name)
            if detector is None or old is None or (cfg.kind, cfg.mode) != (old.kind, old.mode):
                continue  # a different detector would start from nothing: not live
            self.cfg[name] = cfg
            detector.delta = cfg.delta
            if cfg.kind == "page_hinkley":
                detector.threshold, detector.min_instances = cfg.threshold, cfg.min_instances

    def update(self, signals: Mapping[str, float]) -> list[str]:
        fired = []
        for name, value in signals.items():
            if name not in self._detectors or value != value:  # unknown signal or NaN
                continue
            detector = self._detectors[name]
            detector.update(value)
            self._inputs[name].append(value)
            self.in_drift[name] = bool(detector.drift_detected)
            if detector.drift_detected:
                fired.append(name)
                self.alarms[name] += 1
                # Both detectors restart after an alarm; so does the replayable history.
                self._inputs[name] = []
            del self._inputs[name][: -self.history]
        return fired

    def state_dict(self) -> dict[str, Any]:
        return {
            "inputs": {k: list(v) for k, v in self._inputs.items()},
            "alarms": dict(self.alarms),
            "in_drift": dict(self.in_drift),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._detectors = {name: _build(cfg) for name, cfg in self.cfg.items()}
        self._inputs = {name: [] for name in self.cfg}
        for name, values in state["inputs"].items():
            if name in self._detectors:
                for value in values:
                    self._detectors[name].update(value)
                self._inputs[name] = [float(v) for v in values]
        self.alarms.update({k: int(v) for k, v in state["alarms"].items() if k in self.cfg})
        self.in_drift.update({k: bool(v) for k, v in state["in_drift"].items() if k in self.cfg})
