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

FIELDS = ("a_auc", "a_last", "average_forgetting", "bwt", "retention", "deficit")


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def table(results: list[dict[str, Any]], steps: dict[str, float]) -> list[str]:
    lines = [
        "| method | A_auc | A_last | forgetting | BWT | retention | deficit | blame "
        "(seeds) | step time vs sit+replay |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        cells = [_cell([r[f] for r in rows]) for f in FIELDS]
        blames = Counter(r["blame"] for r in rows)
        blame = ", ".join(f"{b} {n}" for b, n in blames.most_common())
        ratio = steps[method] / steps["sit+replay"] if "sit+replay" in steps else math.nan
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {blame} | {ratio:.2f}x |")
    return lines


def write_from_base(
    results: list[dict[str, Any]], steps: dict[str, float], args, seconds: float
) -> None:
    command = " ".join([".venv/bin/python benchmarks/quality.py", *sys.argv[1:]])
    machine = {"platform": platform.platform(), "torch": torch.__version__,
               "streamer": __version__, "threads": args.threads, "device": args.device,
               "seconds": round(seconds)}  # fmt: skip
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality-from-base.json").write_text(
        json.dumps(
            {"command": command, "machine": machine, "runs": results, "step_seconds": steps},
            indent=1,
        )
        + "\n"
    )
    import from_base

    lines = ["# Strategies from a pretrained base (streamer-tiny, Fashion-MNIST base, digits "
             "stream)", "", f"`{command}`  ",
             f"{machine['platform']}, torch {machine['torch']}, {args.threads} threads, "
             f"{seconds / 60:.1f} min; seeds {args.seeds}.", "",
             from_base.__doc__.strip(), "",
             "Mean ± std over seeds. A_auc/A_last/forgetting/BWT over the stream's windows and "
             "the reference; retention = reference accuracy now minus at step 0; deficit = the "
             "alignment deficit at the end; step time = median seconds per learner step over "
             "that of sit+replay, all methods interleaved step by step on the same batches (15 "
             "steps each after 2 warm-up; the last seed's base).", "", *table(results, steps),
             ""]  # fmt: skip
    (out / "quality-from-base.md").write_text("\n".join(lines))
    print("\n".join(lines))
    plot(results, out / "quality-from-base.png")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Retention of the base's reference accuracy against accuracy on the new windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        (x, dx), (y, dy) = (mean_std([r["new_accuracy"] for r in rows]),
                            mean_std([r["retention"] for r in rows]))  # fmt: skip
        ax.errorbar(x, y, xerr=dx, yerr=dy, fmt="o", capsize=3, label=method)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("accuracy on the new windows (digits), end of stream")
    ax.set_ylabel("retention: reference accuracy now minus step 0")
    ax.set_title("Stability-plasticity (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
