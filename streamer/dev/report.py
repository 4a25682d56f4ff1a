"""Human-readable progress lines and the end-of-run summary (accuracy matrix, forgetting)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from streamer.evaluate import EvalReport
from streamer.forgetting import AccuracyMatrix
from streamer.records import StepResult


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
    return line


def summary_table(matrix: AccuracyMatrix, final: EvalReport) -> str:
    """The accuracy matrix (rows: after training through window i) and headline figures."""
    windows = matrix.windows
    width = max([len(w) for w in windows] + [12])
    head = " " * (width + 2) + "".join(f"{w:>{max(len(w), 6) + 2}}" for w in windows)
    lines = ["Accuracy (%) on each window's probes, after training through window:", head]
    rows = {**matrix.rows, "final": final.accuracy}
    for name, row in rows.items():
        cells = "".join(f"{_pct(row.get(w, math.nan)):>{max(len(w), 6) + 2}}" for w in windows)
        lines.append(f"{name:<{width + 2}}{cells}")
    a = final.alignment
    lines += [
        "",
        f"A_last {_pct(final.a_last)}%   A_auc {_pct(final.a_auc)}%   "
        f"avg forgetting {_pct(final.average_forgetting)}%   BWT {_pct(final.bwt)}%",
    ]
    if a:
        lines.append(
            f"matched cos {a['matched_cosine']:.3f}   modality gap {a['modality_gap']:.3f}   "
            f"R@1 i→t {100 * a['recall_at_1_image_to_text']:.0f}%   "
            f"t→i {100 * a['recall_at_1_text_to_image']:.0f}%   "
            f"drift img {a['image_drift']:.3f} txt {a['text_drift']:.3f}   "
            f"structure KL {a['structure_kl']:.3f}"
        )
    return "\n".join(lines)


def write_summary(out: Path, matrix: AccuracyMatrix, final: EvalReport, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {"final": asdict(final), "matrix": matrix.state_dict(), "wall_seconds": seconds}
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.txt").write_text(summary_table(matrix, final) + "\n")
