"""Daemon throughput against the learner's bare step, same model and batches, one run.

(a) bare: learner.step on pre-decoded batches already in memory — the ceiling;
(b) daemon: records produced to the embedded broker, consumed, decoded, trained,
    checkpointed. Reported: samples/s of each and the ratio (b)/(a).

    .venv/bin/python benchmarks/throughput.py --config configs/demo.yaml --records 1600
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from streamer import __version__, datasets
from streamer.broker import EmbeddedBroker
from streamer.config import load_settings
from streamer.daemon import Daemon
from streamer.pipeline import build_engine
from streamer.sink import publish


def bare(settings, samples) -> dict:
    engine = build_engine(settings)
    batch = settings.learner.batch_size
    pairs = [engine.to_pair(s) for s in samples]  # decoded up front: not timed
    times = []
    for i in range(0, len(pairs) - batch + 1, batch):
        result = engine.learner.step(pairs[i : i + batch])
        times.append(result.seconds)
    steady = times[2:]  # the first steps warm up allocators
    return {"samples_per_s": batch * len(steady) / sum(steady),
            "median_step_s": statistics.median(steady), "steps": len(times)}  # fmt: skip


def daemon(settings, samples, tmp: Path) -> dict:
    with EmbeddedBroker() as broker:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": (broker.bootstrap,)})
        ckpt = settings.checkpoint.model_copy(update={"dir": tmp / "ckpt"})
        metrics = settings.metrics.model_copy(update={"port": 0, "host": "127.0.0.1"})
        settings = settings.model_copy(
            update={"kafka": kafka, "checkpoint": ckpt, "metrics": metrics}
        )
        publish(settings.kafka, samples)
        stamps: list[float] = []

        def on_step(outcome, d):
            stamps.append(time.monotonic())
            if d.counts["trained"] + d.counts["probes"] >= len(samples):
                d.stop.set()

        d = Daemon(settings, on_step=on_step)
        d.run()
    batch = settings.learner.batch_size
    steady = stamps[2:]
    return {"samples_per_s": batch * (len(steady) - 1) / (steady[-1] - steady[0]),
            "steps": len(stamps), "checkpoints": d.last_checkpoint}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--records", type=int, default=1600)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    overrides = {"evaluation.probe_fraction": 0.0, "evaluation.eval_every": 10**9,
                 "stream.per_class": None, "checkpoint.every_steps": 20}  # fmt: skip
    settings = load_settings(args.config, overrides)
    samples = list(datasets.stream(settings.stream))[: args.records]
    torch.manual_seed(0)
    a = bare(settings, samples)
    tmp = args.out / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a fresh start: no checkpoint to restore
    b = daemon(settings, samples, tmp)
    result = {
        "command": " ".join(sys.argv), "model": settings.model.arch, "records": len(samples),
        "learner": settings.learner.model_dump(include={"batch_size", "replay_per_step",
                                                         "steps_per_batch"}),
        "bare": a, "daemon": b,
        "ratio_daemon_over_bare": b["samples_per_s"] / a["samples_per_s"],
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "streamer": __version__, "cuda": torch.cuda.is_available()},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"throughput-{settings.model.arch}.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
