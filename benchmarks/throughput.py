"""Daemon throughput against the learner's bare step and a naive loop, same settings, one run;
then what feeding a GPU takes, with web-size JPEG records (feed.py).

Per model, each mode in a fresh process (so peak RSS is its own):
(a) bare: learner.step on pre-decoded batches already in memory — the ceiling;
(b) daemon: records produced to the embedded broker, consumed, decoded (own thread), trained,
    checkpointed and committed; then a second daemon on records produced at 70% of its own rate,
    for produce-to-trained latency (p50/p99, from each record's Kafka timestamp);
(c) naive: the loop a user would write, one thread: poll, decode, step, commit.
Also peak RSS, RSS growth from the third step to the end, and replay bytes per sample;
with --compile, (a) again with learner.compile (torch.compile), its first step timed apart.

    .venv/bin/python benchmarks/throughput.py [--models streamer-tiny streamer-demo ViT-B-32]
        [--scale 1.0] [--device cuda --precision bf16] [--compile] [--feed-records 1280]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import feed
import torch
from kafka import KafkaConsumer

from streamer import __version__
from streamer.config import Settings, StreamConfig
from streamer.dev import datasets
from streamer.dev.broker import EmbeddedBroker
from streamer.dev.produce import ensure_topic, publish
from streamer.intake.kafka_group import client_options
from streamer.records import RawRecord
from streamer.service.daemon import Daemon
from streamer.service.pipeline import build_engine

# Steps are timed after WARMUP steps (allocators, first-touch); sizes fit 2 CPU cores.
WARMUP = 2
MODELS: dict[str, dict[str, int]] = {
    "streamer-tiny": {"records": 1600, "batch_size": 32, "steps_per_batch": 3, "replay": 32},
    "streamer-demo": {"records": 640, "batch_size": 32, "steps_per_batch": 3, "replay": 32},
    "ViT-B-32": {"records": 128, "batch_size": 16, "steps_per_batch": 1, "replay": 16},
}


def settings_for(arch: str, size: dict[str, int], args, bootstrap: str, topic: str, tmp: Path,
                 compiled: bool = False):  # fmt: skip
    return Settings.model_validate({
        "model": {"arch": arch, "peft": {"mode": "full"}},
        "learner": {"batch_size": size["batch_size"], "steps_per_batch": size["steps_per_batch"],
                    "replay_per_step": size["replay"], "device": args.device,
                    "precision": args.precision, "compile": compiled},
        "replay": {"capacity": 2000},
        "evaluation": {"probe_fraction": 0.0, "eval_every": 10**9},
        "kafka": {"bootstrap_servers": [bootstrap], "topic": topic, "group_id": f"g-{topic}",
                  "session_timeout_ms": 10000,
                  "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 600000},
        "checkpoint": {"dir": str(tmp / topic), "every_steps": 20, "every_seconds": 3600},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "logging": {"level": "WARNING"},
    })  # fmt: skip


def samples_for(n: int) -> list:
    cfg = StreamConfig(dataset="fashion-mnist", tasks=1, per_class=max(1, n // 10 + 1))
    return list(datasets.stream(cfg))[:n]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Meter:
    """Step timestamps and RSS: throughput over the steady steps, RSS growth after warm-up."""

    def __init__(self, batch: int) -> None:
        self.batch, self.stamps, self.rss_after_warmup = batch, [time.perf_counter()], 0
        self.step_seconds: list[float] = []  # the learner step alone, as it timed itself

    def step(self, result) -> None:
        self.stamps.append(time.perf_counter())
        self.step_seconds.append(result.seconds)
        if len(self.stamps) == WARMUP + 2:
            self.rss_after_warmup = rss_bytes()

    def result(self, engine) -> dict[str, Any]:
        steady = self.stamps[WARMUP + 1 :]
        replay = engine.replay
        return {
            # the median interval between steps: robust to a stall of the shared machine
            "samples_per_s": self.batch
            / statistics.median(b - a for a, b in itertools.pairwise(steady)),
            "steps": len(self.stamps) - 1,
            "median_learner_step_s": statistics.median(self.step_seconds[WARMUP:]),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_growth_bytes": rss_bytes() - self.rss_after_warmup,
            "replay_bytes_per_sample": replay.nbytes / max(1, len(replay)),
        }


def bare(settings: Settings, n: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    engine = build_engine(settings)
    batch = settings.learner.batch_size
    pairs = [engine.to_pair(s) for s in samples_for(n)]  # decoded up front: not timed
    meter, first = Meter(batch), None
    for i in range(0, len(pairs) - batch + 1, batch):
        result = engine.learner.step(pairs[i : i + batch])
        first = result.seconds if first is None else first
        meter.step(result)
    return meter.result(engine) | {"first_step_s": first}


def daemon(settings: Settings, n: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    batch = settings.learner.batch_size
    publish(settings.kafka, samples_for(n))
    meter = Meter(batch)

    def until(count: int, meter: Meter | None):
        def on_step(outcome, d) -> None:
            if meter is not None:
                meter.step(outcome.result)
            latencies.extend(d.last_latencies)
            if d.ledger.counts["trained"] >= count:
                d.stop.set()

        return on_step

    latencies: list[float] = []
    d = Daemon(settings, on_step=until(n, meter))
    d.run()
    out = meter.result(d.engine) | {"checkpoint": d.persistence.last}
    # Latency: a fresh topic fed at 70% of the rate just measured for about 20 s, once the
    # daemon is in its group (so start-up is not counted as latency).
    paced_rate = 0.7 * out["samples_per_s"]
    paced_n = max(4 * batch, int(paced_rate * 20))
    kafka = settings.kafka.model_copy(
        update={
            "topic": settings.kafka.topic + "-paced",
            "group_id": settings.kafka.group_id + "-paced",
        }
    )
    ckpt = settings.checkpoint.model_copy(update={"dir": Path(f"{settings.checkpoint.dir}-paced")})
    paced = settings.model_copy(update={"kafka": kafka, "checkpoint": ckpt})
    ensure_topic(paced.kafka, 1)
    d2 = Daemon(paced, on_step=until(paced_n, None))

    def produce() -> None:
        while not d2.ready()[0]:
            time.sleep(0.05)
        publish(paced.kafka, samples_for(paced_n), rate=paced_rate)

    latencies.clear()
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    d2.run()
    producer.join()
    steady = latencies[batch * WARMUP :]
    out["latency_rate_records_per_s"] = paced_rate
    out["latency_p50_s"] = statistics.median(steady)
    out["latency_p99_s"] = statistics.quantiles(steady, n=100)[98] if len(steady) > 1 else None
    return out


def naive(settings: Settings, n: int, threads: int) -> dict[str, Any]:
    """What a user would write first: one thread, poll -> decode -> step -> commit."""
    torch.set_num_threads(threads)
    publish(settings.kafka, samples_for(n))
    engine = build_engine(settings)
    k = settings.kafka
    consumer = KafkaConsumer(
        k.topic, group_id=k.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=settings.learner.batch_size, **client_options(k),
    )  # fmt: skip
    meter, trained = Meter(settings.learner.batch_size), 0
    while trained < n:
        polled = consumer.poll(timeout_ms=1000, max_records=settings.learner.batch_size)
        records = [r for batch in polled.values() for r in batch]
        if not records:
            continue
        pairs = [engine.decoder.decode(RawRecord(r.topic, r.partition, r.offset, r.value, r.key,
                 tuple(r.headers or ()), r.timestamp)) for r in records]  # fmt: skip
        outcome = engine.learn(pairs)
        consumer.commit()
        trained += len(pairs)
        meter.step(outcome.result)
    consumer.close()
    return meter.result(engine)


def in_process(fn, *args) -> dict[str, Any]:
    """Each mode in a fresh interpreter: its own peak RSS, no warm caches from another mode."""
    # not multiprocessing.Pool: its daemonic workers cannot start decode processes
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--scale", type=float, default=1.0, help="Multiply the record counts.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="Also (a) with torch.compile.")
    parser.add_argument("--feed-records", type=int, default=1280, help="0: skip feed.py.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="streamer-bench-"))
    try:
        with EmbeddedBroker() as broker:
            for arch in args.models:
                size = MODELS.get(arch, MODELS["ViT-B-32"])
                n = int(size["records"] * args.scale)

                def make(topic: str, arch: str = arch, size: dict = size, compiled=False):
                    return settings_for(arch, size, args, broker.bootstrap, topic, tmp, compiled)

                tag = arch.lower().replace("-", "")
                t = args.threads
                a = in_process(bare, make(f"{tag}-bare"), n, t)
                b = in_process(daemon, make(f"{tag}-daemon"), n, t)
                c = in_process(naive, make(f"{tag}-naive"), n, t)
                rate = "samples_per_s"
                row = {"model": arch, **size, "records": n, "bare": a, "daemon": b, "naive": c,
                       "ratio_daemon_over_bare": b[rate] / a[rate],
                       "ratio_daemon_over_naive": b[rate] / c[rate]}  # fmt: skip
                if args.compile:
                    row["bare_compiled"] = in_process(bare, make(f"{tag}-c", compiled=True), n, t)
                    row["ratio_compiled_over_bare"] = row["bare_compiled"][rate] / a[rate]
                print(json.dumps(row), flush=True)
                results.append(row)
            fed = None
            if args.feed_records:
                fed = feed.run(in_process, broker.bootstrap, args.feed_records, args.threads)
                print(json.dumps(fed), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write(results, fed, args)


def write(results: list[dict], fed: dict | None, args) -> None:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "streamer": __version__, "threads": args.threads,
               "device": args.device, "precision": args.precision,
               "gpu": gpu}  # fmt: skip
    command = " ".join(["benchmarks/throughput.py", *sys.argv[1:]])
    suffix = "" if args.device == "cpu" else f"-{args.device.replace(':', '')}"
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "machine": machine, "results": results, "feed": fed}
    (args.out / f"throughput{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")
    mib = 2**20
    lines = [
        f"# Throughput ({args.device}, {args.threads} threads)", "",
        f"`{command}`  ", f"{machine['platform']}, Python {machine['python']}, torch "
        f"{machine['torch']}, streamer {machine['streamer']}", "",
        "| model | batch / steps / replay | (a) bare samples/s | (b) daemon | (c) naive | "
        "(b)/(a) | (b)/(c) | learner step median (a) / (b) / (c) s | latency p50 / p99 (s) | "
        "peak RSS (b) MiB | RSS growth (b) MiB | replay B/sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        b = r["daemon"]
        lines.append(
            f"| {r['model']} | {r['batch_size']} / {r['steps_per_batch']} / {r['replay']} | "
            f"{r['bare']['samples_per_s']:.1f} | {b['samples_per_s']:.1f} | "
            f"{r['naive']['samples_per_s']:.1f} | {r['ratio_daemon_over_bare']:.2f} | "
            f"{r['ratio_daemon_over_naive']:.2f} | "
            + " / ".join(
                f"{r[m]['median_learner_step_s']:.3f}" for m in ("bare", "daemon", "naive")
            )
            + f" | {b['latency_p50_s']:.2f} / "
            f"{b['latency_p99_s']:.2f} | {b['peak_rss_bytes'] / mib:.0f} | "
            f"{b['rss_growth_bytes'] / mib:+.1f} | {b['replay_bytes_per_sample']:.0f} |"
        )
    lines += feed.compiled(results)
    lines += feed.markdown(fed) if fed else []
    (args.out / f"throughput{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
