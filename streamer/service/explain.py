"""How an evaluation is shown to people (the accuracy matrix, retention, the misalignment
diagnosis, the blocks), and `streamer explain`: the diagnosis of a checkpoint, read from its
own probes, with no broker needed."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.config import Settings
from streamer.evaluation.alignment import BlockShift, Diagnosis
from streamer.evaluation.evaluate import EvalReport
from streamer.evaluation.forgetting import AccuracyMatrix, Cell
from streamer.state.checkpoint import complete_checkpoints, read
from streamer.state.snapshot import split

TOP_CLASSES = 5  # classes named in the summary's diagnosis line (summary.json has them all)
FORGETTING_HIGH = 0.3  # as the StreamerForgettingHigh alert (deploy/prometheus/rules.yml)


def pct(value: float) -> str:
    return "   -" if math.isnan(value) else f"{100 * value:4.0f}"


def _cell(matrix: AccuracyMatrix, row: str, window: str, cell: Cell | None, width: int) -> str:
    """Blank unless measured on enough probes; * marks a forward cell (before training)."""
    if not matrix.measured(cell):
        return " " * width
    mark = "*" if row not in ("step 0", "final") and matrix.is_forward(row, window) else " "
    return f"{pct(cell.accuracy):>{width - 1}}{mark}"


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
        f"{_status(d, misaligned)}   blame {d.blame}",
        f"tower swap accuracy: now {100 * s.now.accuracy:.0f}%   image back to base "
        f"{100 * s.image_base.accuracy:.0f}%   text back to base {100 * s.text_base.accuracy:.0f}%"
        f"   both (base) {100 * s.base.accuracy:.0f}%",
    ]
    lines.append(collapse_line(d))
    lost = d.top(TOP_CLASSES)
    if lost:
        lines.append("classes that lost alignment: " + ", ".join(
            f"{c.text!r} {c.deficit:.2f}" for c in lost))  # fmt: skip
    return lines


def collapse_line(d: Diagnosis) -> str:
    """The image tower's own structure against the base's: a collapse the deficit hides."""
    verdict = "COLLAPSED" if d.collapsed else "not collapsed"
    return (
        f"image tower: images alone separate {100 * d.separable:.0f}% (base "
        f"{100 * d.separable_base:.0f}%), lost {100 * d.collapse:.0f} points   {verdict}"
    )


def _status(d: Diagnosis, misaligned: bool) -> str:
    if misaligned:
        return "MISALIGNED (held over the window)"
    return "over the threshold (not yet held)" if d.alarm else "aligned"


def summary_table(matrix: AccuracyMatrix, final: EvalReport) -> str:
    """The accuracy matrix and headline figures."""
    lines = matrix_table(matrix, final)
    lines += [
        "",
        f"A_last {pct(final.a_last)}%   A_auc {pct(final.a_auc)}%   "
        f"avg forgetting {pct(final.average_forgetting)}%   BWT {pct(final.bwt)}%   "
        f"FWT {pct(final.average_forward_transfer)}%   "
        f"class forgetting {pct(final.average_class_forgetting)}%",
    ]
    for window, change in final.retention.items():
        lines.append(f"retention of {window}: {pct(change).strip()} points since step 0")
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
    lines += block_lines(final.blocks)
    return "\n".join(lines)


def block_lines(blocks: tuple[BlockShift, ...], top: int = 6) -> list[str]:
    """The blocks that moved most, and what switching each one's adapters off recovers."""
    if not blocks:
        return []
    lines = ["blocks (tower block: share of the tower's movement, top-1 change with it off):"]
    for b in blocks[:top]:
        off = "" if b.recovery is None else f", off {100 * b.recovery:+.1f} points"
        lines.append(f"  {b.tower} {b.block}: |delta| {b.delta_norm:.3f} "
                     f"({100 * b.share:.0f}%){off}")  # fmt: skip
    return lines


class NoCheckpoint(FileNotFoundError):
    """The path holds no checkpoint, nor a directory of them."""


@dataclass(frozen=True)
class Explanation:
    """A checkpoint evaluated on its own probes: what `explain` prints, as text or JSON."""

    checkpoint: str
    step: int | None
    samples: int
    settings: Settings
    matrix: AccuracyMatrix
    report: EvalReport


def verdict(report: EvalReport) -> str:
    """One line: aligned or not (with the blamed tower), forgetting high or low."""
    d = report.diagnosis
    if d is None:
        alignment = "alignment not measured"
    elif report.misaligned:
        alignment = f"MISALIGNED (blame: {_tower(d.blame)})"
    elif d.alarm:
        alignment = f"over the misalignment threshold, not yet held (blame: {_tower(d.blame)})"
    else:
        alignment = "aligned"
    forgetting = report.average_forgetting
    if math.isnan(forgetting):
        return f"{alignment}; forgetting not measured"
    level = "high" if forgetting > FORGETTING_HIGH else "low"
    return f"{alignment}; forgetting {level} ({100 * forgetting:.0f}%)"


def _tower(blame: str) -> str:
    return {"image": "image tower", "text": "text tower", "both": "both towers"}.get(blame, blame)


def as_text(e: Explanation) -> str:
    head = (f"{e.checkpoint}: step {e.step}, {e.samples} samples trained, model "
            f"{e.settings.model.arch} ({e.settings.model.peft.mode})")  # fmt: skip
    lines = [verdict(e.report), head, "", summary_table(e.matrix, e.report)]
    if e.report.diagnosis is not None:
        lines += ["", "all classes, largest deficit first:"]
        lines += [f"  {c.text!r}: deficit {c.deficit:.2f} (images alone {100 * c.separable:.0f}%, "
                  f"cross-modal {100 * c.accuracy:.0f}%; back to base: image "
                  f"{100 * c.image_recovery:+.0f}, text {100 * c.text_recovery:+.0f})"
                  for c in e.report.diagnosis.by_class]  # fmt: skip
    return "\n".join(lines)


def as_json(e: Explanation) -> dict[str, Any]:
    """The same figures for tools; an unmeasured figure (NaN) is null."""
    rows = {"step 0": e.matrix.base, **e.matrix.rows, "final": e.matrix.latest}
    return _finite({
        "checkpoint": e.checkpoint, "step": e.step, "samples": e.samples,
        "model": {"arch": e.settings.model.arch, "peft": e.settings.model.peft.mode},
        "verdict": verdict(e.report), "misaligned": e.report.misaligned,
        "matrix": {name: {w: c.accuracy for w, c in row.items() if e.matrix.measured(c)}
                   for name, row in rows.items()},
        "report": dataclasses.asdict(e.report),
    })  # fmt: skip


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def explain(path: Path, settings: Settings | None = None) -> Explanation:
    """The diagnosis of a checkpoint (a ckpt-N directory, or a checkpoint directory: its
    newest), evaluated on the probes it holds, with the per-block attribution."""
    from streamer.service.pipeline import build_engine  # the model: only when explaining

    path = Path(path)
    if not (path / "meta.json").exists():
        found = complete_checkpoints(path) if path.is_dir() else []
        if not found:
            raise NoCheckpoint(f"{path}: no checkpoint here")
        path = found[-1]
    checkpoint = read(path)
    if settings is None:
        if "config" not in checkpoint.meta:
            raise ValueError(f"{path.name} records no config: pass --config")
        settings = Settings.model_validate(checkpoint.meta["config"])
    settings = settings.model_copy(update={"evaluation": settings.evaluation.model_copy(
        update={"attribution_every": 1})})  # fmt: skip
    engine = build_engine(settings)
    shard = split(checkpoint.state, checkpoint.meta, 1)[0]
    learner = {**shard["learner"], "weights": checkpoint.weights,
               "optimizer": checkpoint.state["optimizer"]}  # fmt: skip
    engine.load_state_dict({"learner": learner, "replay": shard["replay"],
                            "evaluator": shard["evaluator"]})  # fmt: skip
    report = engine.evaluator.evaluate(engine.learner.labels)
    return Explanation(checkpoint.id, checkpoint.meta.get("step"), engine.evaluator.samples,
                       settings, engine.evaluator.matrix, report)  # fmt: skip
