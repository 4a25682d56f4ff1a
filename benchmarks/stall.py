"""The daemon against bare with checkpoints on: what a checkpoint costs the training thread,
and the mean rate over a whole run, checkpoints included.

Each stage in a fresh process, each bounded by --seconds of steps:
- bare: `learner.step` on batches decoded up front (cycled): the ceiling;
- daemon, `checkpoint.background: true` (and, with --foreground, false: the old way): records
  on the embedded broker, a replay pre-filled to --replay entries, a checkpoint every
  --every steps, stopped after --seconds.

Per daemon stage: the median interval between steps; for each checkpoint, the interval
holding its boundary and the worst of the next three (while the writer thread works), each
minus the median; how long each checkpoint held the training thread (background: flush and
copy; foreground: write, fsync and commit): the direct stall, which a shared machine's noise
does not blur as it does intervals; and the mean rate from the third step to the last
(records trained over wall time, checkpoints included), over bare's.

    .venv/bin/python benchmarks/stall.py --model streamer-demo --seconds 60 --foreground
    (GPU: see benchmarks/README.md, "Checkpoints and intake off the training thread")
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from throughput import in_process

from streamer.config import Settings, StreamConfig
from streamer.dev import datasets
from streamer.dev.broker import EmbeddedBroker
from streamer.dev.produce import publish
from streamer.records import Pair
from streamer.service.daemon import Daemon
from streamer.service.pipeline import build_engine

WARMUP = 2
MODELS = Path(__file__).parent / "models"


def settings_for(args, topic: str, bootstrap: str, tmp: Path, background: bool) -> Settings:
    return Settings.model_validate({
        "model": {"arch": args.model, "config_dirs": [str(MODELS)],
                  "peft": {"mode": args.peft}},
        "learner": {"batch_size": args.batch, "steps_per_batch": args.updates,
                    "replay_per_step": args.replayed, "device": args.device,
                    "precision": args.precision},
        "replay": {"capacity": args.replay, "store": args.store, "on_device": args.on_device},
        "records": {"decode_workers": args.workers, "decode_mode": args.decode_mode},
        "evaluation": {"probe_fraction": 0.0, "eval_every": 10**9},
        "kafka": {"bootstrap_servers": [bootstrap], "topic": topic, "group_id": f"g-{topic}",
                  "codec": args.codec, "session_timeout_ms": 10000,
                  "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 600000},
        "checkpoint": {"dir": str(tmp / topic), "every_steps": args.every,
                       "every_seconds": 10**6, "background": background},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "logging": {"level": "WARNING"},
    })  # fmt: skip


def samples(kind: str, n: int, distinct: int = 512) -> list:
    """n samples with distinct ids; web-size JPEGs are made for `distinct` and reused."""
    cfg = StreamConfig(dataset="fashion-mnist", tasks=1, per_class=min(n, distinct) // 10 + 1)
    base = list(datasets.stream(cfg))[: min(n, distinct)]
    if kind == "web":
        from streamer.dev.web_images import realistic

        base = realistic(base)
    return [dataclasses.replace(base[i % len(base)], id=f"{base[i % len(base)].id}-{i}")
            for i in range(n)]  # fmt: skip


def bare(settings: Settings, seconds: float, records: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    engine = build_engine(settings)
    batch = settings.learner.batch_size
    pairs = [engine.to_pair(s) for s in samples(records, 8 * batch)]
    batches = itertools.cycle([pairs[i : i + batch] for i in range(0, len(pairs), batch)])
    stamps: list[float] = []
    while len(stamps) <= WARMUP or stamps[-1] - stamps[WARMUP] < seconds:
        engine.learner.step(next(batches))
        stamps.append(time.perf_counter())
    rate = batch * (len(stamps) - 1 - WARMUP) / (stamps[-1] - stamps[WARMUP])
    steady = [b - a for a, b in itertools.pairwise(stamps[WARMUP:])]
    return {"records_per_s": rate, "median_interval_s": statistics.median(steady),
            "steps": len(stamps)}  # fmt: skip


def daemon(settings: Settings, seconds: float, records: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    d = Daemon(settings)
    distinct = [d.engine.to_pair(s) for s in samples(records, 256)]
    for i in range(settings.replay.capacity):  # a full replay, as after hours of stream
        pair = distinct[i % len(distinct)]
        d.engine.replay.add(Pair(dataclasses.replace(pair.sample, id=f"r{i}"), pair.pixels))
    stamps: dict[int, tuple[float, int]] = {}  # step -> (time it ended, records trained)
    marks: list[int] = []  # steps after which a checkpoint began
    held: list[float] = []  # how long each held the training thread (the direct stall)

    def on_step(outcome, daemon) -> None:
        step = outcome.result.step
        stamps[step] = (time.perf_counter(), daemon.ledger.counts["trained"])
        first = stamps.get(min(stamps) + WARMUP)
        if first is not None and stamps[step][0] - first[0] >= seconds:
            daemon.stop.set()

    for name in ("begin", "save_and_commit"):  # note where each checkpoint falls
        real = getattr(d.persistence, name)

        def noted(*a, _real=real, **k):
            step, started = d.engine.learner.steps, time.perf_counter()
            done = _real(*a, **k)
            if done:  # begin: False when skipped (a write still in flight)
                marks.append(step)
                held.append(time.perf_counter() - started)
            return done

        setattr(d.persistence, name, noted)
    d.on_step = on_step
    d.run()
    out = summary(stamps, marks[:-1], d)  # the last: the final one, after the run
    out["held_s"] = held[:-1]
    out["held_s_median"] = statistics.median(held[:-1]) if len(held) > 1 else None
    out["held_s_max"] = max(held[:-1], default=None)
    return out


def summary(stamps: dict, marks: list[int], d: Daemon) -> dict[str, Any]:
    steps = sorted(stamps)[WARMUP:]
    gaps = {s: stamps[s][0] - stamps[s - 1][0] for s in steps[1:]}
    median = statistics.median(gaps.values())
    around = [{"step": m, "boundary_over_median_s": gaps[m + 1] - median,
               "worst_next3_over_median_s": max(gaps.get(m + k, median) for k in (2, 3, 4))
               - median} for m in marks if m + 1 in gaps]  # fmt: skip
    (t0, n0), (t1, n1) = stamps[steps[0]], stamps[steps[-1]]
    registry = d.metrics.registry
    snap = registry.get_sample_value("streamer_checkpoint_snapshot_seconds_sum") or 0.0
    count = registry.get_sample_value("streamer_checkpoint_snapshot_seconds_count") or 0
    return {
        "records_per_s": (n1 - n0) / (t1 - t0), "median_interval_s": median,
        "steps": len(stamps), "checkpoints": around,
        "max_boundary_over_median_s": max((a["boundary_over_median_s"] for a in around),
                                          default=None),
        "max_next3_over_median_s": max((a["worst_next3_over_median_s"] for a in around),
                                       default=None),
        "snapshot_s_mean": snap / count if count else None,
        "replay_entries": len(d.engine.replay),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model", default="streamer-demo")
    add("--peft", default="full", choices=["full", "lora", "last_blocks"])
    add("--device", default="cpu")
    add("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    add("--batch", type=int, default=32)
    add("--updates", type=int, default=3, help="learner.steps_per_batch")
    add("--replayed", type=int, default=32, help="learner.replay_per_step")
    add("--replay", type=int, default=2000, help="Replay capacity, pre-filled.")
    add("--store", default="encoded", choices=["encoded", "pixels"])
    add("--on-device", action="store_true", help="replay.on_device")
    add("--records", default="fashion", choices=["fashion", "web"])
    add("--codec", default="json", choices=["json", "raw"])
    add("--workers", type=int, default=None, help="records.decode_workers")
    add("--decode-mode", default="auto", choices=["auto", "threads", "processes"])
    add("--every", type=int, default=5, help="checkpoint.every_steps")
    add("--seconds", type=float, default=60.0, help="Steps timed per stage.")
    add("--rate", type=float, default=None, help="Records/s to provision (default: bare's).")
    add("--foreground", action="store_true", help="Also the daemon with background: false.")
    add("--threads", type=int, default=2)
    add("--out-json", type=Path, default=Path("benchmarks/results/stall.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"command": " ".join(["benchmarks/stall.py", *sys.argv[1:]]),
                           "machine": machine(args), "stages": {}}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="streamer-stall-"))
    with EmbeddedBroker() as broker:
        modes = [True, False] if args.foreground else [True]
        topics = {bg: f"stall-{'bg' if bg else 'fg'}-{int(time.time())}" for bg in modes}
        make = {bg: settings_for(args, topics[bg], broker.bootstrap, tmp, bg) for bg in modes}
        started = time.monotonic()
        producers: list[threading.Thread] = []
        if args.rate:  # provisioned up front: produced while bare runs
            producers = produce(args, args.rate, [make[bg].kafka for bg in modes], out)
        out["stages"]["bare"] = in_process(bare, make[True], args.seconds, args.records,
                                          args.threads)  # fmt: skip
        print(json.dumps(out["stages"]["bare"]), flush=True)
        if not args.rate:
            rate = out["stages"]["bare"]["records_per_s"]
            producers = produce(args, rate, [make[bg].kafka for bg in modes], out)
        for p in producers:
            p.join()
        for bg in modes:
            name = "daemon_background" if bg else "daemon_foreground"
            out["stages"][name] = in_process(daemon, make[bg], args.seconds, args.records,
                                             args.threads)  # fmt: skip
            stage = out["stages"][name]
            stage["over_bare"] = (stage["records_per_s"]
                                  / out["stages"]["bare"]["records_per_s"])  # fmt: skip
            print(json.dumps(out["stages"][name]), flush=True)
        out["wall_s"] = time.monotonic() - started
    shutil.rmtree(tmp, ignore_errors=True)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(out, indent=1) + "\n")
    args.out_json.with_suffix(".md").write_text(markdown(out) + "\n")
    print(markdown(out))


def produce(args, rate: float, topics: list, out: dict) -> list[threading.Thread]:
    """Enough records for --seconds at `rate` plus start-up, on each topic, in threads."""
    n = int(rate * (args.seconds + 30) * 1.2) + 4 * args.batch
    made = samples(args.records, n)
    out["records_on_topic"] = n
    threads = [threading.Thread(target=publish, args=(kafka, made)) for kafka in topics]
    for thread in threads:
        thread.start()
    return threads


def machine(args) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "device": args.device, "gpu": gpu,
            "cpus": multiprocessing.cpu_count()}  # fmt: skip


def markdown(out: dict[str, Any]) -> str:
    m, bare_ = out["machine"], out["stages"]["bare"]
    lines = [f"# Checkpoint stall and daemon/bare ({m['device']})", "", f"`{out['command']}`  ",
             f"{m['platform']}, Python {m['python']}, torch {m['torch']}, {m['cpus']} CPUs"
             + (f", {m['gpu']}" if m["gpu"] else ""), "",
             "| stage | records/s (mean, whole run) | / bare | median step interval s | "
             "checkpoints | boundary interval over median, max ms | next 3 over median, "
             "max ms | training thread held, median / max ms |",
             "|---|---|---|---|---|---|---|---|",
             f"| bare | {bare_['records_per_s']:.1f} | 1.00 | {bare_['median_interval_s']:.3f} "
             "| – | – | – | – |"]  # fmt: skip
    for name in ("daemon_background", "daemon_foreground"):
        s = out["stages"].get(name)
        if s is None:
            continue
        snap = (f"{1000 * s['held_s_median']:.0f} / {1000 * s['held_s_max']:.0f}"
                if s.get("held_s_median") is not None else "–")  # fmt: skip
        lines.append(
            f"| {name.replace('_', ', ')} | {s['records_per_s']:.1f} | {s['over_bare']:.2f} | "
            f"{s['median_interval_s']:.3f} | {len(s['checkpoints'])} | "
            f"{_ms(s['max_boundary_over_median_s'])} | {_ms(s['max_next3_over_median_s'])} | "
            f"{snap} |"
        )
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1000 * seconds:+.0f}"


if __name__ == "__main__":
    main()
