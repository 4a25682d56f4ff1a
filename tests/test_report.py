"""The end-of-run summary shows only measured cells, marks forward cells, and counts probes."""

from __future__ import annotations

from streamer.dev.report import summary_table
from streamer.evaluation.evaluate import EvalReport
from streamer.evaluation.forgetting import AccuracyMatrix, Cell


def _final(m: AccuracyMatrix) -> EvalReport:
    return EvalReport(
        samples=400, kind="final",
        accuracy={w: c.accuracy for w, c in m.latest.items() if m.measured(c)},
        probes={w: c.probes for w, c in m.latest.items()}, left_out=tuple(m.left_out()),
        a_last=m.a_last(), a_auc=m.a_auc(), forgetting=m.forgetting(),
        average_forgetting=m.average_forgetting(), bwt=m.bwt(),
        forward_transfer=m.forward_transfer(),
        average_forward_transfer=m.average_forward_transfer(), retention=m.retention(),
    )  # fmt: skip


def test_unmeasured_cells_are_blank_and_forward_cells_marked():
    m = AccuracyMatrix(max_windows=4, min_probes=20)
    m.track("w0")
    m.record_base({"w0": Cell(0.1, 30)})
    m.start("w0")
    m.track("w1")
    m.record({"w0": Cell(0.9, 30), "w1": Cell(0.0, 3)}, 100, periodic=False)  # w1: 3 probes
    m.close("w0")
    m.track("w2")
    m.start("w1")
    m.record({"w0": Cell(0.6, 30), "w1": Cell(0.8, 30), "w2": Cell(0.4, 25)}, 200, periodic=False)
    m.close("w1")
    m.start("w2")
    m.record({"w0": Cell(0.5, 30), "w1": Cell(0.7, 30), "w2": Cell(1.0, 4)}, 300, periodic=True)
    lines = summary_table(m, _final(m)).splitlines()
    rows = {line.split()[0]: line for line in lines[2:6]}
    assert rows["step"].split() == ["step", "0", "10"]  # only w0 measured on the base
    assert rows["w0"].split() == ["w0", "90"]  # w1's 3 probes: blank, not 0%
    assert rows["w1"].split() == ["w1", "60", "80", "40*"]  # w2 measured before training on it
    assert rows["final"].split() == ["final", "50", "70"]  # w2 now on 4 probes: blank
    assert lines[6].split() == ["probes", "now", "30", "30", "4"]
    assert "w2 (4)" in lines[7] and "fewer than 20 probes" in lines[7]
