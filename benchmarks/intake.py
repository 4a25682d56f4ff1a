"""Intake records/s: the real KafkaSource on the embedded broker (poll thread, decode pool,
ordered hand-over) with `replay.add` as the only work per batch (feed.feed_capacity), per
codec, decode mode (threads or processes) and number of decode workers.

Records: web-size JPEGs from real photos (streamer.dev.web_images; --distinct of them made,
then repeated under new ids), behind `streamer-tiny-224` (224 px, open_clip's transform).
Each run is a fresh process and its own consumer group on one topic per codec; runs are
interleaved (--repeats), the median per configuration is reported.

    .venv/bin/python benchmarks/intake.py --workers 1 2 --codec json raw \\
        --modes threads processes --records 1280 --out-json benchmarks/results/intake-cpu.json

`--pace S` takes a batch every S seconds, as a training thread would: the queue stays full and
intake runs under backpressure, as it does beside training; the table then also gives the CPU
each thread of the process spent per record (what intake takes from training on a shared CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import feed
import torch

from streamer.dev.broker import EmbeddedBroker
from streamer.dev.produce import publish

# this process's threads: the consumer, the poll loop, kafka-python's IO, the ordering thread,
# decode threads; with processes, the executor's result thread (unnamed) and its call feeder
THREADS = ["MainThread", "kafka-poll", "kafka-io-streamer", "decode", "decode-worker", "Thread",
           "QueueFeederThread"]  # fmt: skip


def in_process(fn, *args) -> dict[str, Any]:
    # not multiprocessing.Pool: its daemonic workers cannot start decode processes
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(fn, *args).result()


def records(n: int, distinct: int) -> list:
    base = feed.web_records(min(n, distinct))
    return [dataclasses.replace(base[i % len(base)], id=f"{base[i % len(base)].id}-{i}")
            for i in range(n)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--codec", nargs="+", default=["json", "raw"], choices=["json", "raw"])
    parser.add_argument("--modes", nargs="+", default=["threads", "processes"],
                        choices=["threads", "processes"])  # fmt: skip
    parser.add_argument("--records", type=int, default=1280, help="Per run.")
    parser.add_argument("--distinct", type=int, default=512, help="JPEGs made, then reused.")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the consumer.")
    parser.add_argument("--device", default="cpu", help="Recorded only: decoding is on CPUs.")
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="Take a batch every PACE s (as training would): CPU per record.",
    )
    parser.add_argument("--out-json", type=Path, default=Path("benchmarks/results/intake.json"))
    args = parser.parse_args()
    started = time.monotonic()
    queue = feed.settings_for("pixels").kafka.queue_records  # paced: read ahead, then measured
    made = records(args.records + (queue + 4 * feed.SHAPE["batch_size"] if args.pace else 0),
                   args.distinct)  # fmt: skip
    runs: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        for codec in args.codec:
            publish(feed.settings_for("pixels", broker.bootstrap, f"intake-{codec}",
                                      codec).kafka, made)  # fmt: skip
        grid = itertools.product(range(args.repeats), args.codec, args.workers, args.modes)
        for rep, codec, workers, mode in grid:
            group = f"g-{codec}-{mode}-{workers}-{rep}"
            run = in_process(feed.feed_capacity, broker.bootstrap, f"intake-{codec}",
                             args.records, workers, args.threads, mode, codec, group,
                             args.pace)  # fmt: skip
            print(json.dumps(run), flush=True)
            runs.append(run)
    out = {"command": " ".join(["benchmarks/intake.py", *sys.argv[1:]]),
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "cpus": multiprocessing.cpu_count(),
                       "device": args.device},
           "image_bytes_median": statistics.median(len(r.image) for r in made[: args.distinct]),
           "runs": runs, "medians": medians(runs),
           "wall_s": time.monotonic() - started}  # fmt: skip
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(out, indent=1) + "\n")
    args.out_json.with_suffix(".md").write_text(markdown(out, args) + "\n")
    print(markdown(out, args))


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keyed: dict[str, list[float]] = {}
    for r in runs:
        keyed.setdefault(f"{r['codec']}/{r['mode']}/{r['workers']}", []).append(r["records_per_s"])
    return {k: statistics.median(v) for k, v in keyed.items()}


def markdown(out: dict[str, Any], args) -> str:
    m = out["machine"]
    lines = [f"# Intake records/s ({m['cpus']} CPUs)", "", f"`{out['command']}`  ",
             f"{m['platform']}, Python {m['python']}, torch {m['torch']}; JPEG median "
             f"{out['image_bytes_median'] / 1000:.0f} KB; {args.records} records per run, "
             f"median of {args.repeats}; {out['wall_s']:.0f} s in all", "",
             "| codec | mode | " + " | ".join(f"{w} workers" for w in args.workers) + " |",
             "|---|---|" + "---|" * len(args.workers)]  # fmt: skip
    for codec, mode in itertools.product(args.codec, args.modes):
        cells = [out["medians"].get(f"{codec}/{mode}/{w}") for w in args.workers]
        shown = " | ".join("–" if c is None else f"{c:.0f}" for c in cells)
        lines.append(f"| {codec} | {mode} | {shown} |")
    if args.pace:
        lines += ["", f"CPU per record of this process's threads, ms (a batch taken every "
                  f"{args.pace:g} s: intake under backpressure, as beside training; median "
                  "over repeats):", "", "| codec | mode | workers | " + " | ".join(THREADS)
                  + " | all |", "|---|---|---|" + "---|" * (len(THREADS) + 1)]  # fmt: skip
        for codec, mode, w in itertools.product(args.codec, args.modes, args.workers):
            runs = [r for r in out["runs"] if (r["codec"], r["mode"], r["workers"])
                    == (codec, mode, w)]  # fmt: skip
            if runs:
                cpu = [r["cpu_ms_per_record"] for r in runs]
                cells = [statistics.median(c.get(t, 0.0) for c in cpu) for t in THREADS]
                total = statistics.median(sum(c.values()) for c in cpu)
                lines.append(
                    f"| {codec} | {mode} | {w} | "
                    + " | ".join(f"{c:.3f}" for c in cells)
                    + f" | {total:.3f} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
