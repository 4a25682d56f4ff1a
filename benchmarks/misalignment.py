"""Misalignment detection: delay and false alarms of the score and its river detector.

Per seed: pretrain a tiny base on Fashion-MNIST, then tune (a) the image tower only and (b) the
text tower only on a shifted stream (digits), (c) both towers with SIT on the same stream, and
(d) both towers on more Fashion-MNIST (stationary). Reports, per run, the trained samples until
the score first exceeds the threshold, how many evaluations were over it, the largest score,
and the samples at which the PageHinkley detector on the score alarmed. A last run, SIT on the
stationary stream and then the shifted one, shows the detector after a settled period.

    .venv/bin/python benchmarks/misalignment.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from streamer import __version__
from streamer.dev import scenarios

RUNS = [
    ("image", "shifted"), ("text", "shifted"), ("both", "shifted"), ("both", "stationary"),
    ("both", "stationary-then-shifted"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/misalignment.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    traces = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            base = scenarios.pretrain(Path(tmp) / f"base-{seed}.safetensors", seed=seed)
            for towers, kind in RUNS:
                trace = scenarios.run(base, towers, kind, seed=seed, lr=args.lr)  # type: ignore[arg-type]
                traces.append({"seed": seed, **asdict(trace)})
                print(
                    f"seed {seed}  {trace.name:24s} first over {trace.threshold}: "
                    f"{trace.first_above()!s:>5} samples  evaluations over: "
                    f"{trace.evaluations_above():2d}/{len(trace.samples)}  "
                    f"max {max(trace.misalignment):.3f} (instant {max(trace.instant):.3f})  "
                    f"detector alarms at {trace.alarms}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join(["benchmarks/misalignment.py", *sys.argv[1:]]),
        "version": __version__, "torch": torch.__version__, "machine": platform.machine(),
        "threads": torch.get_num_threads(), "lr": args.lr, "runs": traces,
    }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
