"""Accuracy matrix arithmetic on hand-made numbers, and the drift monitor."""

from __future__ import annotations

import math
import random

import pytest

from streamer.config import DetectorConfig
from streamer.drift import DriftMonitor
from streamer.forgetting import AccuracyMatrix


def _matrix() -> AccuracyMatrix:
    m = AccuracyMatrix(max_windows=8)
    m.track("w0")
    m.record({"w0": 0.9}, 100)
    m.close("w0")
    m.track("w1")
    m.record({"w0": 0.5, "w1": 0.8}, 200)
    m.close("w1")
    m.track("w2")
    m.record({"w0": 0.3, "w1": 0.6, "w2": 0.7}, 300)
    return m


def test_forgetting_bwt_and_accuracies_follow_their_definitions():
    m = _matrix()
    assert m.rows == {"w0": {"w0": 0.9}, "w1": {"w0": 0.5, "w1": 0.8}}
    assert m.a_last() == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    # forgetting_j = max_{i<T} a[i][j] - a[T][j]
    assert m.forgetting() == pytest.approx({"w0": 0.9 - 0.3, "w1": 0.8 - 0.6})
    assert m.average_forgetting() == pytest.approx((0.6 + 0.2) / 2)
    # BWT = mean_j (a[T][j] - a[j][j]) over closed windows
    assert m.bwt() == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)
    # A_auc: mean of the periodic mean accuracies
    assert m.a_auc() == pytest.approx((0.9 + 0.65 + 1.6 / 3) / 3)


def test_tracked_windows_are_bounded_and_old_ones_leave_every_row():
    m = AccuracyMatrix(max_windows=2)
    for i in range(4):
        m.track(f"w{i}")
        m.record({f"w{j}": 0.5 for j in range(i + 1)}, i)
        m.close(f"w{i}")
    assert m.windows == ["w2", "w3"]
    assert set(m.rows) == {"w2", "w3"} and all(set(r) <= {"w2", "w3"} for r in m.rows.values())


def test_matrix_state_round_trip():
    m = _matrix()
    n = AccuracyMatrix(max_windows=8)
    n.load_state_dict(m.state_dict())
    assert n.state_dict() == m.state_dict() and n.a_auc() == m.a_auc()


def test_empty_matrix_reports_nan_not_errors():
    m = AccuracyMatrix(max_windows=3)
    assert math.isnan(m.a_last()) and math.isnan(m.a_auc()) and math.isnan(m.bwt())


def _monitor() -> DriftMonitor:
    cfg = {
        "accuracy": DetectorConfig(kind="adwin", delta=0.002),
        "matched_cosine": DetectorConfig(kind="page_hinkley", threshold=0.5, delta=0.01),
    }
    return DriftMonitor(cfg, history=5000)


def test_detectors_alarm_on_a_shift_and_not_on_a_stationary_signal():
    rng = random.Random(0)
    monitor = _monitor()
    stationary = [
        monitor.update({"accuracy": rng.gauss(0.8, 0.02), "matched_cosine": rng.gauss(0.3, 0.01)})
        for _ in range(300)
    ]
    assert not any(stationary)
    fired_at = None
    for i in range(300):
        if monitor.update({"accuracy": rng.gauss(0.3, 0.02)}) and fired_at is None:
            fired_at = i
    assert fired_at is not None and fired_at < 100
    assert monitor.alarms["accuracy"] >= 1 and monitor.alarms["matched_cosine"] == 0


def test_monitor_restores_exactly_by_replaying_its_inputs():
    rng = random.Random(1)
    values = [rng.gauss(0.8, 0.05) for _ in range(200)] + [rng.gauss(0.4, 0.05) for _ in range(200)]
    a, b = _monitor(), _monitor()
    for v in values[:150]:
        a.update({"accuracy": v, "matched_cosine": v / 2})
    b.load_state_dict(a.state_dict())
    for v in values[150:]:
        assert a.update({"accuracy": v, "matched_cosine": v / 2}) == b.update(
            {"accuracy": v, "matched_cosine": v / 2}
        )
    assert a.state_dict() == b.state_dict()
