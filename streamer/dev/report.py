"""Human-readable progress lines and the end-of-run summary (accuracy matrix, forgetting,
the misalignment diagnosis)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from streamer.alignment import Diagnosis
from streamer.evaluate import EvalReport
from streamer.forgetting import AccuracyMatrix, Cell
from streamer.records import StepResult

TOP_CLASSES = 5  # classes named in the summary's diagnosis line (summary.json has them all)


def _pct(value: float) -> str:
    return "   -" if math.isnan(value) else f"{100 * value:4.0f}"


def progress_line(result: StepResult, samples: int, rate: float, report: EvalReport | None) -> str:
    line = (
        f"step {result.step:5d}  samples {samples:6d}  {rate:6.1f}/s  "
        f"loss {result.prequential_loss:6.3f}  online acc {100 * result.prequential_accuracy:5.1f}%"
    )
    if report is not None and report.accuracy:
        windows = " ".join(f"{w}={_pct(a).strip()}%" for w, a in report.accuracy.items())
        line += f"  | probe acc {windows}"
    if report is not None and report.diagnosis is not None:
        line += f"  deficit {report.diagnosis.deficit:.2f}"
    return line


def _cell(matrix: AccuracyMatrix, row: str, window: str, cell: Cell | None, width: int) -> str:
    """Blank unless measured on enough probes; * marks a forward cell (before training)."""
    if not matrix.measured(cell):
        return " " * width
    mark = "*" if row not in ("step 0", "final") and matrix.is_forward(row, window) else " "
    return f"{_pct(cell.accuracy):>{width - 1}}{mark}"


def matrix_table(matrix: AccuracyMatrix, final: EvalReport) -> list[str]:
    """Rows: step 0 (the base), each closed window, final; only measured cells."""
    windows = matrix.windows
    name_width = max([len(w) for w in windows] + [12]) + 2
    widths = [max(len(w), 6) + 2 for w in windows]
    lines = [
        "Accuracy (%) on each window's probes, after training through window "
        f"(blank: fewer than {matrix.min_probes} probes or not measured; * before any "
        "training on that window):",
        " " * name_width + "".join(f"{w:>{n - 1}} " for w, n in zip(windows, widths, strict=True)),
    ]
    rows = {"step 0": matrix.base, **matrix.rows, "final": matrix.latest}
    for name, row in rows.items():
        cells = "".join(
            _cell(matrix, name, w, row.get(w), n) for w, n in zip(windows, widths, strict=True)
        )
        lines.append(f"{name:<{name_width}}{cells}")
    counts = "".join(
        f"{final.probes.get(w, 0):>{n - 1}} " for w, n in zip(windows, widths, strict=True)
    )
    lines.append(f"{'probes now':<{name_width}}{counts}")
    if final.left_out:
        held = ", ".join(f"{w} ({final.probes.get(w, 0)})" for w in final.left_out)
        lines.append(f"left out of every mean (fewer than {matrix.min_probes} probes): {held}")
    return lines


def diagnosis_lines(d: Diagnosis, misaligned: bool) -> list[str]:
    s = d.swap
    lines = [
        f"alignment deficit {d.deficit:.3f}, {d.lost:.3f} of it alignment the base had "
        f"(images alone separate {100 * d.separable:.0f}%, cross-modal "
        f"{100 * s.now.accuracy:.0f}%, {d.classes} classes)   "
        f"{'MISALIGNED' if misaligned else 'aligned'}   blame {d.blame}",
        f"tower swap accuracy: now {100 * s.now.accuracy:.0f}%   image back to base "
        f"{100 * s.image_base.accuracy:.0f}%   text back to base {100 * s.text_base.accuracy:.0f}%"
        f"   both (base) {100 * s.base.accuracy:.0f}%",
    ]
    lost = d.top(TOP_CLASSES)
    if lost:
        lines.append("classes that lost alignment: " + ", ".join(
            f"{c.text!r} {c.deficit:.2f}" for c in lost))  # fmt: skip
    return lines


def summary_table(matrix: AccuracyMatrix, final: EvalReport) -> str:
    """The accuracy matrix and headline figures."""
    lines = matrix_table(matrix, final)
    lines += [
        "",
        f"A_last {_pct(final.a_last)}%   A_auc {_pct(final.a_auc)}%   "
        f"avg forgetting {_pct(final.average_forgetting)}%   BWT {_pct(final.bwt)}%   "
        f"FWT {_pct(final.average_forward_transfer)}%   "
        f"class forgetting {_pct(final.average_class_forgetting)}%",
    ]
    for window, change in final.retention.items():
        lines.append(f"retention of {window}: {_pct(change).strip()} points since step 0")
    a = final.alignment
    if a:
        lines.append(
            f"matched cos {a['matched_cosine']:.3f}   modality gap {a['modality_gap']:.3f}   "
            f"R@1 i→t {100 * a['recall_at_1_image_to_text']:.0f}%   "
            f"t→i {100 * a['recall_at_1_text_to_image']:.0f}%   "
            f"drift img {a['image_drift']:.3f} txt {a['text_drift']:.3f}"
        )
    if final.diagnosis is not None:
        lines += diagnosis_lines(final.diagnosis, final.misaligned)
    return "\n".join(lines)


def write_summary(out: Path, matrix: AccuracyMatrix, final: EvalReport, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"final": asdict(final), "matrix": matrix.state_dict(), "wall_seconds": seconds}
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.txt").write_text(summary_table(matrix, final) + "\n")
