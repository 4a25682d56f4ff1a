"""Accuracy matrix arithmetic on hand-made numbers, and the drift monitor."""

from __future__ import annotations

import math
import random

import pytest

from streamer.config import DetectorConfig
from streamer.evaluation.drift import DriftMonitor
from streamer.evaluation.forgetting import AccuracyMatrix, Cell, ClassForgetting


def _c(accuracy: float, probes: int = 50) -> Cell:
    return Cell(accuracy, probes)


def _matrix() -> AccuracyMatrix:
    """Step 0, then windows w0, w1, w2 in turn, with a pinned reference; min_probes 20."""
    m = AccuracyMatrix(max_windows=8, min_probes=20)
    m.track("ref", pinned=True)
    m.track("w0")
    m.record_base({"ref": _c(0.8), "w0": _c(0.1, probes=3)})  # w0: too few probes at step 0
    m.start("w0")
    m.record({"ref": _c(0.7), "w0": _c(0.9)}, 100, periodic=True)
    m.record_base({"w0": _c(0.2)})  # measured later on the base model
    m.record_base({"ref": _c(0.1)})  # a measured base cell is never replaced
    m.track("w1")
    m.record({"ref": _c(0.7), "w0": _c(0.9), "w1": _c(0.3)}, 150, periodic=False)  # boundary
    m.close("w0")
    m.start("w1")
    m.record_base({"w1": _c(0.25)})
    m.record({"ref": _c(0.6), "w0": _c(0.5), "w1": _c(0.8)}, 300, periodic=True)
    m.track("w2")
    m.record({"ref": _c(0.6), "w0": _c(0.5), "w1": _c(0.8), "w2": _c(0.5, probes=5)}, 320,
             periodic=False)  # fmt: skip
    m.close("w1")
    m.start("w2")
    m.record({"ref": _c(0.5), "w0": _c(0.3), "w1": _c(0.6), "w2": _c(0.7)}, 400, periodic=True)
    return m


def test_the_base_row_is_kept_once_measured_on_enough_probes():
    m = _matrix()
    assert {w: c.accuracy for w, c in m.base.items()} == {"ref": 0.8, "w0": 0.2, "w1": 0.25}


def test_forgetting_bwt_and_accuracies_follow_their_definitions():
    m = _matrix()
    assert m.rows["w0"]["w1"].accuracy == 0.3 and m.is_forward("w0", "w1")
    assert not m.is_forward("w1", "w0") and not m.is_forward("w0", "ref")
    assert m.a_last() == pytest.approx((0.5 + 0.3 + 0.6 + 0.7) / 4)
    # forgetting_j = max over step 0 and closed rows of a[i][j], minus a[T][j]; the window
    # being trained (w2) has none; the reference's best is its step-0 accuracy
    assert m.forgetting() == pytest.approx({"ref": 0.8 - 0.5, "w0": 0.9 - 0.3, "w1": 0.8 - 0.6})
    assert m.average_forgetting() == pytest.approx((0.3 + 0.6 + 0.2) / 3)
    # BWT = mean_j (a[T][j] - a[j][j]) over closed windows
    assert m.bwt() == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)
    # FWT_j = a[j-1][j] - a[0][j]; w2's forward cell had 5 probes: not measured
    assert m.forward_transfer() == pytest.approx({"w1": 0.3 - 0.25})
    assert m.retention() == pytest.approx({"ref": 0.5 - 0.8})


def test_a_auc_weighs_periodic_evaluations_by_the_samples_between_them():
    m = _matrix()
    means = [(0.7 + 0.9) / 2, (0.6 + 0.5 + 0.8) / 3, (0.5 + 0.3 + 0.6 + 0.7) / 4]
    weights = [100, 200, 100]  # boundary evaluations at 150 and 320 do not count
    expected = sum(a * w for a, w in zip(means, weights, strict=True)) / sum(weights)
    assert m.a_auc() == pytest.approx(expected)
    assert [n for n, _ in m.curve] == [100, 300, 400]


def test_cells_on_too_few_probes_enter_no_mean_and_are_reported():
    m = AccuracyMatrix(max_windows=4, min_probes=20)
    m.track("w0")
    m.track("w1")
    m.start("w0")
    m.start("w1")
    m.record({"w0": _c(0.9), "w1": _c(0.0, probes=4)}, 100, periodic=True)
    assert m.a_last() == pytest.approx(0.9) and m.left_out() == {"w1": 4}
    assert m.a_auc() == pytest.approx(0.9) and m.needs_base("w1")


def test_an_untrained_window_is_not_in_a_last():
    m = AccuracyMatrix(max_windows=4)
    m.track("w0")
    m.track("w1")  # its probes arrived, training has not reached it
    m.start("w0")
    m.record({"w0": _c(0.8), "w1": _c(0.1)}, 10, periodic=True)
    assert m.a_last() == pytest.approx(0.8) and m.counted() == {"w0": 0.8}


def test_tracked_windows_are_bounded_and_old_ones_leave_every_row():
    m = AccuracyMatrix(max_windows=2)
    for i in range(4):
        m.track(f"w{i}")
        m.record_base({f"w{i}": _c(0.1)})
        m.start(f"w{i}")
        m.record({f"w{j}": _c(0.5) for j in range(i + 1)}, i, periodic=True)
        m.close(f"w{i}")
    assert m.windows == ["w2", "w3"] and m.started == ["w2", "w3"]
    assert set(m.rows) == {"w2", "w3"} and all(set(r) <= {"w2", "w3"} for r in m.rows.values())
    assert set(m.base) == {"w2", "w3"}


def test_matrix_state_round_trip():
    m = _matrix()
    n = AccuracyMatrix(max_windows=8, min_probes=20)
    n.load_state_dict(m.state_dict())
    assert n.state_dict() == m.state_dict() and n.a_auc() == m.a_auc()
    assert n.forward_transfer() == m.forward_transfer() and n.forgetting() == m.forgetting()


def test_empty_matrix_reports_nan_not_errors():
    m = AccuracyMatrix(max_windows=3)
    assert math.isnan(m.a_last()) and math.isnan(m.a_auc()) and math.isnan(m.bwt())
    assert m.forgetting() == {} and m.forward_transfer() == {} and m.retention() == {}


def test_class_forgetting_is_the_best_past_row_minus_now():
    c = ClassForgetting(max_classes=10, min_probes=5)
    c.record({"cat": _c(0.2), "dog": _c(0.0)})  # step 0
    c.close()
    c.record({"cat": _c(0.9), "dog": _c(0.7), "emu": _c(0.6, probes=2)})
    c.close()  # a row closes
    c.record({"cat": _c(0.95)})  # periodic: not a candidate for the best
    c.record({"cat": _c(0.4), "dog": _c(0.6)})
    assert c.forgetting() == pytest.approx({"cat": 0.9 - 0.4, "dog": 0.7 - 0.6})
    assert c.average() == pytest.approx((0.5 + 0.1) / 2)


def test_class_forgetting_keeps_only_the_most_recent_classes():
    c = ClassForgetting(max_classes=3)
    for i in range(6):
        c.record({f"class-{i}": _c(0.5)})
        c.close()
    assert set(c.best) == {"class-3", "class-4", "class-5"}
    restored = ClassForgetting(max_classes=3)
    restored.load_state_dict(c.state_dict())
    assert restored.state_dict() == c.state_dict()


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
