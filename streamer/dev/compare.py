"""The demo's comparison: the same stream learnt by plain fine-tuning, in process, and the
two runs side by side (retention, new-data accuracy, forgetting, alignment) with a plot that
marks task boundaries and chance."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from streamer.config import Settings
from streamer.evaluation.evaluate import REFERENCE, EvalReport
from streamer.records import Sample
from streamer.service.pipeline import build_engine, run_stream

History = list[tuple[int, dict[str, float]]]  # (samples trained, accuracy per window)


@dataclass
class RunResult:
    name: str
    final: EvalReport
    history: History = field(default_factory=list)
    base_reference: float = math.nan  # the reference window's accuracy at step 0
    labels: int = 0  # candidate labels at the end (chance is one over it)


def plain_finetuning(settings: Settings) -> Settings:
    """The same model, LoRA and learning rate; CLIP's in-batch loss, no replay, nothing
    toward the base and nothing of its domain rehearsed, the trained weights served: what
    `streamer` is compared against."""
    learner = settings.learner.model_copy(
        update={
            "loss": "clip",
            "replay_per_step": 0,
            "serve": "student",
            "regularizer": settings.learner.regularizer.model_copy(update={"kind": "none"}),
            "rehearse": settings.learner.rehearse.model_copy(update={"manifest": None}),
        }
    )
    replay = settings.replay.model_copy(update={"capacity": 0})
    return settings.model_copy(update={"learner": learner, "replay": replay})  # fmt: skip


def run_in_process(name: str, settings: Settings, samples: list[Sample]) -> RunResult:
    engine = build_engine(settings)
    result = RunResult(name, None)  # type: ignore[arg-type]  # final set below

    def on_step(_, report: EvalReport | None) -> None:
        if report is not None:
            result.history.append((engine.evaluator.samples, dict(report.accuracy)))

    result.final = run_stream(engine, samples, settings.learner.batch_size, on_step)
    result.history.append((engine.evaluator.samples, dict(result.final.accuracy)))
    return finish(result, engine)


def finish(result: RunResult, engine) -> RunResult:
    """The step-0 reference accuracy and the candidates' count, read off a finished engine."""
    evaluator = engine.evaluator
    base = evaluator.matrix.base.get(REFERENCE)
    result.base_reference = base.accuracy if base is not None else math.nan
    template = engine.learner.cfg.prompt_template
    probes = {s.prompt(template) for held in evaluator.probes.values() for s in held.items()}
    result.labels = len(set(engine.learner.labels) | probes)  # the evaluation's candidates
    return result


def new_accuracy(final: EvalReport) -> float:
    """Mean accuracy now over the stream's windows (the reference aside)."""
    values = [a for w, a in final.accuracy.items() if w != REFERENCE]
    return statistics.mean(values) if values else math.nan


def figures(r: RunResult) -> dict[str, float | str | None]:
    """The side-by-side figures of one run, for summary.json."""
    d = r.final.diagnosis
    return {
        "reference_step0": r.base_reference,
        "reference_now": r.final.accuracy.get(REFERENCE, math.nan),
        "retention": r.final.retention.get(REFERENCE, math.nan), "retention_share": _share(r),
        "new_accuracy": new_accuracy(r.final), "a_last": r.final.a_last,
        "average_forgetting": r.final.average_forgetting,
        "deficit": d.deficit if d else None, "blame": d.blame if d else None,
        "misaligned": r.final.misaligned, "chance": 1 / r.labels if r.labels else None,
    }  # fmt: skip


def _fmt(value: float, percent: bool = True, sign: bool = False) -> str:
    if value != value:
        return "-"
    return f"{100 * value:+.0f}" if sign else (f"{100 * value:.0f}%" if percent else f"{value:.3f}")


def side_by_side(runs: list[RunResult]) -> str:
    """One column per run: what it kept, what it learnt, what it forgot, how aligned."""
    rows: list[tuple[str, list[str]]] = []
    for label, get in (
        ("reference accuracy at step 0", lambda r: _fmt(r.base_reference)),
        ("reference accuracy now", lambda r: _fmt(r.final.accuracy.get(REFERENCE, math.nan))),
        ("retention (points)", lambda r: _fmt(r.final.retention.get(REFERENCE, math.nan),
                                              sign=True)),
        ("retention (share of step 0)", lambda r: _fmt(_share(r))),
        ("new-data accuracy", lambda r: _fmt(new_accuracy(r.final))),
        ("A_last", lambda r: _fmt(r.final.a_last)),
        ("average forgetting", lambda r: _fmt(r.final.average_forgetting)),
        ("alignment deficit", lambda r: _deficit(r.final)),
        ("matched cosine", lambda r: _fmt(r.final.alignment.get("matched_cosine", math.nan),
                                          percent=False)),
    ):  # fmt: skip
        rows.append((label, [get(r) for r in runs]))
    width = max(len(label) for label, _ in rows) + 2
    cols = [max([len(r.name), 10] + [len(values[i]) for _, values in rows]) + 2
            for i, r in enumerate(runs)]  # fmt: skip
    head = " " * width + "".join(f"{r.name:>{c}}" for r, c in zip(runs, cols, strict=True))
    lines = [head] + [f"{label:<{width}}" + "".join(f"{v:>{c}}" for v, c in
                      zip(values, cols, strict=True)) for label, values in rows]  # fmt: skip
    return "\n".join(lines)


def _share(r: RunResult) -> float:
    now = r.final.accuracy.get(REFERENCE, math.nan)
    return now / r.base_reference if r.base_reference else math.nan


def _deficit(final: EvalReport) -> str:
    d = final.diagnosis
    if d is None:
        return "-"
    state = "misaligned" if final.misaligned else "aligned"
    return f"{d.deficit:.2f} {state}"


def task_starts(samples: list[Sample], is_probe) -> list[tuple[int, str]]:
    """(samples trained before it, window) for each task's first record, probes not counted."""
    starts, trained, seen = [], 0, set()
    for s in samples:
        if s.task not in seen:
            seen.add(s.task)
            starts.append((trained, s.task))
        trained += 0 if is_probe(s) else 1
    return starts


def plot(runs: list[RunResult], starts: list[tuple[int, str]], path: Path) -> None:
    """Per run, probe accuracy of each window over samples trained; task boundaries dashed,
    chance (one over the candidate labels) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), dpi=110, sharey=True)
    for ax, run in zip(list(getattr(axes, "flat", [axes])), runs, strict=True):
        windows = list(dict.fromkeys(w for _, acc in run.history for w in acc))
        for window in windows:
            points = [(n, a[window]) for n, a in run.history if window in a]
            ax.plot([n for n, _ in points], [100 * a for _, a in points], marker=".",
                    label=window)  # fmt: skip
        for n, task in starts[1:]:
            ax.axvline(n, color="grey", linestyle="--", linewidth=0.8)
            ax.text(n, 97, f" {task}", fontsize=7, color="grey", va="top")
        if run.labels:
            ax.axhline(100 / run.labels, color="black", linestyle=":", linewidth=1,
                       label=f"chance (1/{run.labels})")  # fmt: skip
        kept = _fmt(run.final.retention.get(REFERENCE, math.nan), sign=True)
        ax.set_title(f"{run.name}: retention {kept} pts, new data "
                     f"{_fmt(new_accuracy(run.final))}")  # fmt: skip
        ax.set_xlabel("samples trained")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize="x-small")
    axes_list = list(getattr(axes, "flat", [axes]))
    axes_list[0].set_ylabel("probe accuracy (%)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
