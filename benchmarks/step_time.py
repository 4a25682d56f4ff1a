"""Learner step time per model and trainable-parameter mode, on real Fashion-MNIST batches.

One step = score 64 fresh samples, then 3 optimizer steps on them plus 32 replayed.

    .venv/bin/python benchmarks/step_time.py [--device cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from streamer import __version__
from streamer.config import Settings
from streamer.dev import datasets
from streamer.service.pipeline import build_engine

CASES = [("streamer-tiny", "lora"), ("streamer-tiny", "full"),
         ("streamer-demo", "lora"), ("streamer-demo", "full")]  # fmt: skip


def measure(arch: str, mode: str, device: str, repeats: int) -> dict:
    settings = Settings.model_validate({
        "model": {"arch": arch, "peft": {"mode": mode}},
        "learner": {"batch_size": 64, "replay_per_step": 32, "steps_per_batch": 3,
                    "device": device},
        "stream": {"dataset": "digits" if not datasets.FASHION_MNIST_DIR.exists()
                   else "fashion-mnist", "per_class": 100},
    })  # fmt: skip
    engine = build_engine(settings)
    samples = list(datasets.stream(settings.stream))
    for sample in samples[:500]:
        engine.replay.add(sample)
    pairs = [engine.to_pair(s) for s in samples[: 64 * (repeats + 1)]]
    seconds = [
        engine.learner.step(pairs[i * 64 : (i + 1) * 64]).seconds for i in range(repeats + 1)
    ]
    steady = seconds[1:]  # the first step warms up
    return {"model": arch, "peft": mode, "device": device, "bf16": engine.learner.bf16,
            "median_step_s": statistics.median(steady), "min_step_s": min(steady),
            "max_step_s": max(steady), "repeats": len(steady)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = [measure(arch, mode, args.device, args.repeats) for arch, mode in CASES]
    result = {"command": " ".join(sys.argv), "rows": rows,
              "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__, "streamer": __version__}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"step-time-{args.device}.json").write_text(json.dumps(result, indent=2))
    for row in rows:
        print(f"{row['model']:14s} {row['peft']:5s} {row['device']:5s} "
              f"median {row['median_step_s'] * 1000:7.1f} ms  (min {row['min_step_s'] * 1000:.1f}, "
              f"max {row['max_step_s'] * 1000:.1f}, n={row['repeats']})")  # fmt: skip


if __name__ == "__main__":
    main()
