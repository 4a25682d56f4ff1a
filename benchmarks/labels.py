"""Step time on a stream whose labels are all distinct (product or entity ids), side by side
with a control stream of ten repeating labels.

Every step scores the fresh batch against the label prompts held (`learner.max_labels`, the
most recently seen). Before that bound, step time grew linearly with the labels ever seen
(issue 13: 150 ms at 1,280 labels, 1,670 ms at 10,240). The two learners take their steps in
turn, so the machine's noise falls on both alike; times are CPU process time per step, and
the figures are medians over a window of steps at the start and at the end.

    .venv/bin/python benchmarks/labels.py [--labels 10000] [--window 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from streamer import __version__
from streamer.config import Settings, StreamConfig
from streamer.dev import datasets
from streamer.records import Pair, Sample
from streamer.service.pipeline import Engine, build_engine

BATCH, UPDATES, REPLAY = 32, 3, 32
WARMUP = 2  # steps left out of the start window (allocator and caches settle)


def engine(max_labels: int | None) -> Engine:
    learner = {"batch_size": BATCH, "steps_per_batch": UPDATES, "replay_per_step": REPLAY,
               "device": "cpu"}  # fmt: skip
    if max_labels is not None:
        learner["max_labels"] = max_labels
    return build_engine(Settings.model_validate({"model": {"arch": "streamer-tiny"},
                                                 "learner": learner}))  # fmt: skip


def streams(engine: Engine, total: int) -> tuple[list[Pair], list[Pair]]:
    """The same images twice: labels all distinct, and ten labels repeating (the control)."""
    digits = list(datasets.stream(StreamConfig(dataset="digits", tasks=1, seed=0)))
    pixels = [engine.to_pair(s).pixels for s in digits]
    distinct, control = [], []
    for i in range(total):
        image, sample = pixels[i % len(digits)], digits[i % len(digits)]
        for label, out in ((f"item-{i:06d}", distinct), (f"class-{i % 10}", control)):
            record = Sample(f"{label}-{i}", sample.image, f"a photo of {label}", label)
            out.append(Pair(record, image))
    return distinct, control


def timed_step(engine: Engine, batch: list[Pair]) -> float:
    started = time.process_time()
    engine.learner.step(batch)
    return time.process_time() - started


def run(labels: int, window: int, max_labels: int | None) -> dict:
    arms = {"distinct": engine(max_labels), "control": engine(max_labels)}
    distinct, control = streams(arms["distinct"], labels + BATCH)
    pairs = {"distinct": distinct, "control": control}
    steps = -(-labels // BATCH)  # until `labels` distinct labels have been seen
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(steps):
        for name, arm in arms.items():  # in turn: noise falls on both arms alike
            seconds[name].append(timed_step(arm, pairs[name][i * BATCH : (i + 1) * BATCH]))
    rows = {}
    for name, arm in arms.items():
        start = statistics.median(seconds[name][WARMUP : WARMUP + window])
        end = statistics.median(seconds[name][-window:])
        rows[name] = {"start_s": start, "end_s": end, "end_over_start": end / start,
                      "labels_seen": min(labels, steps * BATCH) if name == "distinct" else 10,
                      "labels_held": len(arm.learner.label_set), "steps": steps}  # fmt: skip
    return {"rows": rows, "max_labels": arms["distinct"].learner.label_set.capacity,
            "per_step_seconds": seconds}  # fmt: skip


def markdown(result: dict) -> str:
    rows, d = result["rows"], result["rows"]["distinct"]
    lines = [
        "# Step time on a stream of distinct labels", "",
        f"Command: `{result['command']}`", "",
        f"Tiny model, batch {BATCH}, {UPDATES} updates per batch, {REPLAY} replayed per "
        f"update, `max_labels` {result['max_labels']}; CPU process time per learner step, "
        f"median of {result['window']} steps at the start (after {WARMUP} warm-up) and of "
        f"the last {result['window']}. The two streams take their steps in turn.", "",
        "| stream | labels seen | labels held | steps | start ms | end ms | end / start |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, row in rows.items():
        lines.append(f"| {name} | {row['labels_seen']:,} | {row['labels_held']} | "
                     f"{row['steps']} | {row['start_s'] * 1000:.1f} | {row['end_s'] * 1000:.1f} "
                     f"| {row['end_over_start']:.2f} |")  # fmt: skip
    verdict = "within" if d["end_over_start"] <= 1.2 else "NOT within"
    lines += ["", f"Distinct labels, end over start: {d['end_over_start']:.2f} "
              f"({verdict} 1.2); control: {rows['control']['end_over_start']:.2f}. "
              f"End, distinct over control: {d['end_s'] / rows['control']['end_s']:.2f}.", "",
              f"Machine: {result['machine']['platform']}, {result['machine']['threads']} "
              f"torch thread(s), torch {result['machine']['torch']}, streamer "
              f"{result['machine']['streamer']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, default=10_000, help="distinct labels to stream")
    parser.add_argument("--window", type=int, default=20, help="steps in each median")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-labels", type=int, help="learner.max_labels (default: config's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"command": " ".join(["python", *sys.argv]), "window": args.window,
              **run(args.labels, args.window, args.max_labels),
              "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__, "streamer": __version__}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "labels.json").write_text(json.dumps(result, indent=2))
    (args.out / "labels.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
