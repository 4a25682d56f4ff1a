"""The learner's step on the CPU in this tree against another checkout, interleaved runs.

    git worktree add --detach /tmp/before REV
    .venv/bin/python benchmarks/step_compare.py --before /tmp/before [--model streamer-demo]

Each run is a fresh process (default shape: batch 64, 3 updates, 32 replayed; fp32; real
Fashion-MNIST); the two trees alternate, so a busy machine slows both alike. Writes
benchmarks/results/step-compare-cpu.json: every run's median step and the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RUN = r"""
import json, statistics, sys
from streamer.config import Settings
from streamer.dev import datasets
from streamer.service.pipeline import build_engine
s = Settings.model_validate({"model": {"arch": sys.argv[1], "peft": {"mode": sys.argv[2]}},
    "learner": {"batch_size": 64, "replay_per_step": 32, "steps_per_batch": 3, "device": "cpu"},
    "evaluation": {"probe_fraction": 0.0, "eval_every": 10**9},
    "stream": {"dataset": "fashion-mnist", "per_class": 60}})
e = build_engine(s)
pairs = [e.to_pair(x) for x in list(datasets.stream(s.stream))[:600]]
for p in pairs[:300]:
    e.replay.add(p)
secs = [e.learner.step(pairs[300 + 40 * i : 364 + 40 * i]).seconds for i in range(6)]
print(json.dumps(statistics.median(secs[2:])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--model", default="streamer-demo")
    parser.add_argument("--peft", default="lora")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": Path(__file__).resolve().parents[1]}
    runs: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            done = subprocess.run([sys.executable, "-c", RUN, args.model, args.peft], cwd=tree,
                                  env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                                  capture_output=True, text=True, check=True)  # fmt: skip
            runs[name].append(json.loads(done.stdout.splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    median = {name: statistics.median(values) for name, values in runs.items()}
    result = {"command": "python " + " ".join(sys.argv), "model": args.model, "peft": args.peft,
              "runs_s": runs, "median_s": median,
              "after_over_before": median["after"] / median["before"]}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step-compare-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
