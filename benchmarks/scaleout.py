"""Scale-out throughput: `streamer run` under torchrun with 1 and with 2 ranks, side by side.

Same topic (4 partitions, already full), same per-rank settings (so 2 ranks train a global
batch twice as large per step). Configurations are RANKSxTHREADS (torch threads per rank):
1x1 against 2x1 asks what a second worker adds; 1x2 against 2x1 compares on the same
cores (where ranks can only win by overlapping better, and lose to communication). Each reads
every rank's /metrics (each rank serves port + local rank) and times the middle of the run:
samples/s from 20% to 90% of the records trained, excluding start-up and the tail.

    .venv/bin/python benchmarks/scaleout.py [--model streamer-tiny] [--records 3000]
        [--configs 1x1 1x2 2x1] [--device cpu] [--backend gloo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
import yaml

from streamer import __version__
from streamer.config import KafkaConfig, StreamConfig
from streamer.dev import datasets
from streamer.dev.broker import EmbeddedBroker
from streamer.dev.produce import publish

RESULTS = Path(__file__).parent / "results"
TRAINED = re.compile(r"^streamer_records_trained_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def free_port_block(n: int) -> int:
    """A base port with n free ports above it (ranks serve base + local rank)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and all(_free(base + i) for i in range(n)):
            return base


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def trained(base: int, ranks: int) -> float:
    total = 0.0
    for rank in range(ranks):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{base + rank}/metrics", timeout=2) as r:
                total += sum(float(v) for v in TRAINED.findall(r.read().decode()))
        except OSError:
            pass  # not up yet
    return total


def run(args, bootstrap: str, topic: str, shape: str, work: Path) -> dict:
    ranks, threads = (int(n) for n in shape.split("x"))
    base = free_port_block(ranks)
    config = {
        "kafka": {"bootstrap_servers": [bootstrap], "topic": topic, "group_id": f"g{shape}",
                  "linger_ms": 100},
        "model": {"arch": args.model, "peft": {"mode": "full"}},
        "learner": {"batch_size": args.batch_size, "steps_per_batch": 3, "replay_per_step": 32,
                    "device": args.device},
        "evaluation": {"probe_fraction": 0.0, "eval_every": 10**9},
        "checkpoint": {"dir": str(work / f"ckpt-{shape}"), "every_steps": 50},
        "distributed": {"backend": args.backend},
        "metrics": {"host": "127.0.0.1", "port": base},
        "logging": {"level": "WARNING"},
    }  # fmt: skip
    path = work / f"config-{shape}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={ranks}",
        "-m",
        "streamer",
        "run",
        "--config",
        str(path),
    ]
    log = open(work / f"torchrun-{shape}.log", "wb")  # noqa: SIM115
    job = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    marks: dict[float, float] = {}
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and len(marks) < 2 and job.poll() is None:
            done = trained(base, ranks)
            for share in (0.2, 0.9):
                if done >= share * args.records and share not in marks:
                    marks[share] = (time.monotonic(), done)
            time.sleep(0.1)
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=180)
    if len(marks) < 2:
        raise SystemExit(f"{shape}: timed out; see {work}/torchrun-{shape}.log")
    (t0, n0), (t1, n1) = marks[0.2], marks[0.9]
    return {
        "shape": shape,
        "ranks": ranks,
        "threads_per_rank": threads,
        "samples_per_second": (n1 - n0) / (t1 - t0),
        "timed_samples": n1 - n0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="streamer-tiny")
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["1x1", "1x2", "2x1"],
        help="RANKSxTHREADS per run, in order",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, help="default: results/scaleout-<model>.json")
    args = parser.parse_args()
    samples = list(
        datasets.stream(
            StreamConfig(dataset="fashion-mnist", tasks=1, per_class=args.records // 10 + 1)
        )
    )
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        topic = "scaleout"
        kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), topic=topic)
        publish(kafka, samples[: args.records], partitions=4)
        runs = [run(args, broker.bootstrap, topic, shape, Path(tmp)) for shape in args.configs]
    first = runs[0]["samples_per_second"]
    for r in runs:
        r["ratio_to_first"] = r["samples_per_second"] / first
        print(
            f"{r['shape']}: {r['samples_per_second']:.1f} samples/s "
            f"({r['ratio_to_first']:.2f}x {runs[0]['shape']})"
        )
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "streamer": __version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"partitions": 4},
        "runs": runs,
    }  # fmt: skip
    args.out = args.out or RESULTS / f"scaleout-{args.model}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
