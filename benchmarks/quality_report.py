"""Tables and the stability-plasticity plot of the from-a-base setting (benchmarks/quality.py
--setting from-base)."""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from streamer import __version__

BOUNDS = ("base", "joint", "joint + rehearsal")  # no stream order: off the frontier

FIELDS = (
    "new_accuracy",
    "retention",
    "retention_own_labels",
    "a_last",
    "a_auc",
    "average_forgetting",
    "deficit",
)
HEADER = (
    "| method | new-data accuracy | share of joint | reference kept | retention (all labels) | "
    "retention (base's labels) | A_last | A_auc | forgetting | deficit | blame (seeds) | "
    "step time vs sit+replay |"
)


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def share_of_joint(results: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """New-data accuracy over joint training's on the same seed, per (method, seed)."""
    joint = {r["seed"]: r["new_accuracy"] for r in results if r["method"] == "joint"}
    return {(r["method"], r["seed"]): r["new_accuracy"] / joint[r["seed"]]
            for r in results if joint.get(r["seed"])}  # fmt: skip


def kept(r: dict[str, Any]) -> float:
    """The reference accuracy now as a share of the base's (step 0), all labels candidates."""
    at_start = r["reference"] - r["retention"]
    return r["reference"] / at_start if at_start else math.nan


def table(results: list[dict[str, Any]], steps: dict[str, float]) -> list[str]:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    shares = share_of_joint(results)
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        cells = [_cell([r[f] for r in rows]) for f in FIELDS]
        share = _cell([shares.get((method, r["seed"]), math.nan) for r in rows])
        share += " | " + _cell([kept(r) for r in rows])
        blames = Counter(r["blame"] for r in rows)
        blame = ", ".join(f"{b} {n}" for b, n in blames.most_common())
        ratio = (steps[method] / steps["sit+replay"]
                 if method in steps and "sit+replay" in steps else math.nan)  # fmt: skip
        step = "–" if math.isnan(ratio) else f"{ratio:.2f}x"
        lines.append(f"| {method} | {cells[0]} | {share} | " + " | ".join(cells[1:])
                     + f" | {blame} | {step} |")  # fmt: skip
    return lines


def write_from_base(
    results: list[dict[str, Any]], steps: dict[str, float], args, seconds: float
) -> None:
    command = " ".join([".venv/bin/python benchmarks/quality.py", *sys.argv[1:]])
    also = getattr(args, "also", None)
    if also is not None:  # the earlier run's own command, and the one before it, if any
        earlier = json.loads(Path(also).read_text())
        command = "\n".join([earlier["command"], command])
    machine = {"platform": platform.platform(), "torch": torch.__version__,
               "streamer": __version__, "threads": args.threads, "device": args.device,
               "seconds": round(seconds)}  # fmt: skip
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    name = getattr(args, "name", "quality-from-base")
    (out / f"{name}.json").write_text(
        json.dumps(
            {"command": command, "machine": machine, "runs": results, "step_seconds": steps},
            indent=1,
        )
        + "\n"
    )
    import from_base
    import streams

    stream = ("digits stream" if args.setting == "from-base" else
              "stream of its held-out classes, then digits")  # fmt: skip
    shown = "  \n".join(f"`{c}`" for c in command.splitlines())
    lines = [f"# Strategies from a pretrained base (streamer-tiny, Fashion-MNIST base, {stream})",
             "", f"{shown}  ",
             f"{machine['platform']}, torch {machine['torch']}, {args.threads} threads, "
             f"{seconds / 60:.1f} min; seeds {args.seeds}.", "",
             from_base.__doc__.strip(), "", streams.__doc__.strip(), "",
             "Mean ± std over seeds. New-data accuracy = mean over the stream's windows at the "
             "end (all labels are candidates); share of joint = that over joint training's, "
             "same seed; reference kept = reference accuracy now over at step 0 (all labels); "
             "retention (all labels) = reference accuracy now minus at step 0, the "
             "new labels among the candidates (class-incremental); retention (base's labels) = "
             "the same with only the base's labels as candidates (what the base's features "
             "still separate; the difference is interference from the new labels); "
             "A_auc/A_last/forgetting over the stream's windows and the reference; deficit = "
             "the alignment deficit at the end; step time = median seconds per learner step "
             "over that of sit+replay, all methods interleaved step by step on the same "
             "batches (15 steps each after 2 warm-up; the last seed's base). Rows: `base` = "
             "no training; `joint` = offline, every training sample of the stream shuffled, "
             f"{from_base.JOINT_EPOCHS} epochs, SIT, the same LoRA: the ceiling.", "",
             *table(results, steps), ""]  # fmt: skip
    (out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    plot(results, out / f"{name}.png", getattr(args, "chosen", None))


def frontier(points: dict[str, tuple[float, float]]) -> list[str]:
    """Methods whose (new-data accuracy, retention) means no other method beats on both."""
    return sorted((m for m, (x, y) in points.items()
                   if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y)
                              for x2, y2 in points.values())),
                  key=lambda m: points[m][0])  # fmt: skip


def plot(results: list[dict[str, Any]], path: Path, chosen: str | None = None) -> None:
    """Retention of the base's reference accuracy against accuracy on the new windows, the
    frontier of the means, the bounds, and the chosen default ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    points = {}
    colours = plt.cm.tab20.colors
    for i, method in enumerate(dict.fromkeys(r["method"] for r in results)):
        rows = [r for r in results if r["method"] == method]
        (x, dx), (y, dy) = (mean_std([r["new_accuracy"] for r in rows]),
                            mean_std([r["retention"] for r in rows]))  # fmt: skip
        points[method] = (x, y)
        style = "s" if method in BOUNDS else "o"
        ax.errorbar(x, y, xerr=dx, yerr=dy, fmt=style, capsize=3, label=method,
                    color=colours[i % len(colours)])  # fmt: skip
        if method == chosen:
            ax.plot(x, y, "o", markersize=16, markerfacecolor="none", color="red",
                    label=f"chosen default ({method})")  # fmt: skip
    streaming = {m: p for m, p in points.items() if m not in BOUNDS}
    without = {m: p for m, p in streaming.items() if "rehearsal" not in m}
    for group, colour, label in ((without, "grey", "frontier without rehearsal"),
                                 (streaming, "black", "frontier with rehearsal")):  # fmt: skip
        if group is without or len(group) > len(without):
            front = frontier(group)
            ax.plot([points[m][0] for m in front], [points[m][1] for m in front], "--",
                    color=colour, linewidth=1, label=label)  # fmt: skip
    ax.axhline(0, color="grey", linewidth=0.8)
    base = [r["reference"] for r in results if r["method"] == "base"]
    if base:
        floor = -0.05 * statistics.mean(base)  # the target: keep 95% of the base
        ax.axhline(floor, color="red", linewidth=0.8, linestyle=":", label="-5% of the base")
    if "joint" in points:  # the target: 85% of joint's new-data accuracy
        ax.axvline(0.85 * points["joint"][0], color="red", linewidth=0.8, linestyle="--",
                   label="85% of joint (new data)")  # fmt: skip
    ax.set_xlabel("accuracy on the new windows, end of stream")
    ax.set_ylabel("retention: reference accuracy now minus step 0")
    ax.set_title("Stability-plasticity (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
