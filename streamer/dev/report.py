"""Human-readable progress lines and the end-of-run summary (accuracy matrix, forgetting,
the misalignment diagnosis)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from streamer.evaluation.evaluate import EvalReport
from streamer.evaluation.forgetting import AccuracyMatrix
from streamer.records import StepResult
from streamer.service.explain import pct as _pct
from streamer.service.explain import summary_table

__all__ = ["progress_line", "summary_table", "write_summary"]


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


def write_summary(
    out: Path, matrix: AccuracyMatrix, final: EvalReport, seconds: float,
    comparison: dict[str, dict] | None = None,
) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    data = {"final": asdict(final), "matrix": matrix.state_dict(), "wall_seconds": seconds,
            "comparison": comparison or {}}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.txt").write_text(summary_table(matrix, final) + "\n")
