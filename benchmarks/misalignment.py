"""Misalignment diagnosis on real data: detection delay, false alarms, and the named tower.

Per seed: pretrain a tiny base on Fashion-MNIST (20,000 samples, every parameter), then tune
it on a shifted stream (scikit-learn's digits, twice through) with (a) the image tower only,
(b) the text tower only, (c) both towers with SIT, (d) both towers with SIT and reservoir
replay (the daemon's default method), and on (e) a stationary stream (more Fashion-MNIST).
Full tuning at lr 1e-4, batch 32, one update per batch; an evaluation every 320 samples on
5% of the stream held out plus 200 pinned Fashion-MNIST reference probes. "Detected" is the
first evaluation at which the deficit has stayed over evaluation.misalignment_threshold
(0.15) for misalignment_window (4) evaluations; the blame is the diagnosis's at that point.

    .venv/bin/python benchmarks/misalignment.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from streamer import __version__
from streamer.dev import scenarios

RUNS = [  # (name, towers, stream, replay capacity, the tower a correct diagnosis names)
    ("image tower only", "image", "shifted", 0, "image"),
    ("text tower only", "text", "shifted", 0, "text"),
    ("both towers, SIT", "both", "shifted", 0, None),
    ("both towers, SIT + replay", "both", "shifted", 1000, None),
    ("both towers, stationary", "both", "stationary", 0, None),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/misalignment"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, started = [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            base = scenarios.pretrain(Path(tmp) / f"base-{seed}.safetensors", seed=seed)
            for name, towers, kind, replay, faulty in RUNS:
                trace = scenarios.run(base, towers, kind, seed=seed, lr=args.lr,  # type: ignore[arg-type]
                                      replay=replay)  # fmt: skip
                rows.append(_row(name, seed, faulty, trace))
                print(_line(rows[-1]), flush=True)
    _write(args, rows, time.monotonic() - started)


def _row(name: str, seed: int, faulty: str | None, trace: scenarios.Trace) -> dict:
    return {"run": name, "seed": seed, "faulty": faulty, "detected": trace.first_above(),
            "blame": trace.blame_when_detected(), "flagged": trace.evaluations_above(),
            "evaluations": len(trace.samples), "max_deficit": max(trace.deficit),
            "trace": asdict(trace)}  # fmt: skip


def _line(row: dict) -> str:
    return (f"seed {row['seed']}  {row['run']:28s} detected at {row['detected']!s:>5} samples, "
            f"blame {row['blame']!s:5s}  flagged {row['flagged']:2d}/{row['evaluations']}  "
            f"max deficit {row['max_deficit']:.3f}")  # fmt: skip


def summary(rows: list[dict]) -> list[str]:
    lines = ["| run | should | detected (seeds) | delay, samples | blame right | max deficit |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, *_, faulty in RUNS:
        mine = [r for r in rows if r["run"] == name]
        hits = [r for r in mine if r["detected"] is not None]
        delays = ", ".join(f"{r['detected']:,}" for r in hits) or "-"
        right = sum(r["blame"] == faulty for r in hits) if faulty else "-"
        should = f"alarm, blame {faulty}" if faulty else "no alarm"
        deficit = ", ".join(f"{r['max_deficit']:.2f}" for r in mine)
        lines.append(f"| {name} | {should} | {len(hits)}/{len(mine)} | {delays} | {right} | "
                     f"{deficit} |")  # fmt: skip
    return lines


def _write(args: argparse.Namespace, rows: list[dict], seconds: float) -> None:
    command = " ".join([".venv/bin/python benchmarks/misalignment.py", *sys.argv[1:]])
    meta = {"command": command, "version": __version__, "torch": torch.__version__,
            "machine": platform.machine(), "threads": torch.get_num_threads(), "lr": args.lr,
            "seconds": round(seconds)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "runs": rows}, indent=1) + "\n")
    text = [f"# Misalignment diagnosis ({command})", "",
            f"torch {meta['torch']}, {meta['machine']}, {meta['threads']} threads, "
            f"{meta['seconds']} s.", "", *summary(rows), "", *map(_line, rows)]  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
