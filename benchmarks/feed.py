"""What it takes to feed a GPU, measured on the CPU with realistic records (throughput.py runs it).

Records: web-sized JPEGs made from real photos (streamer.dev.web_images), sent as JSON. The
model is `streamer-tiny-224` (benchmarks/models): a tiny network behind ViT-B's input, 224 px
with open_clip's usual transform, so decoding, preprocessing and replay cost what they would
for ViT-B/32 or B/16 while the model's own work stays small on 2 cores.

- decode: milliseconds per image on one thread, the full JPEG and Pillow's draft (1/2 scale);
- feed capacity: records/s the real KafkaSource on the embedded broker (poll, decode pool,
  ordered hand-over) delivers with replay.add as the only work per batch, 1 and 2 workers,
  REPEATS runs of each interleaved, the median of each;
- training-thread overhead per batch: a learner step's time outside the model's own work
  (StepResult.seconds - model_seconds: replay draws, decoding them, stacking, labels), at the
  default shape (batch 64, 3 updates, 32 replayed each), `replay.store` encoded vs pixels.
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

from streamer.config import Settings, StreamConfig
from streamer.dev import datasets
from streamer.dev.produce import publish
from streamer.dev.web_images import realistic
from streamer.intake.decode import Decoder
from streamer.intake.kafka_source import KafkaSource
from streamer.service.pipeline import build_engine
from streamer.service.wiring import decode_pool

ARCH = "streamer-tiny-224"
MODELS = Path(__file__).parent / "models"
SHAPE = {"batch_size": 64, "steps_per_batch": 3, "replay_per_step": 32}  # the defaults
WARMUP = 2
REPEATS = 3  # feed runs per worker count; the median is reported
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def web_records(n: int, seed: int = 0) -> list:
    cfg = StreamConfig(dataset="fashion-mnist", tasks=1, per_class=n // 10 + 1, seed=seed)
    return realistic(list(datasets.stream(cfg))[:n], seed)


def settings_for(store: str, bootstrap: str = "127.0.0.1:9", topic: str = "feed",
                 codec: str = "json", group: str | None = None) -> Settings:  # fmt: skip
    return Settings.model_validate({
        "model": {"arch": ARCH, "config_dirs": [str(MODELS)], "peft": {"mode": "full"}},
        "learner": SHAPE,
        "replay": {"capacity": 2000, "store": store},
        "evaluation": {"probe_fraction": 0.0, "eval_every": 10**9},
        "kafka": {"bootstrap_servers": [bootstrap], "topic": topic, "codec": codec,
                  "group_id": group or f"g-{topic}"},
        "logging": {"level": "WARNING"},
    })  # fmt: skip


def decode_ms(n: int, threads: int) -> dict[str, Any]:
    """Per-image decode + preprocess to the model's input, one thread, full vs draft."""
    torch.set_num_threads(threads)
    records = web_records(n)
    engine = build_engine(settings_for("pixels"))
    model, cfg = engine.model, engine.decoder.cfg
    out: dict[str, Any] = {"image_bytes_median": statistics.median(len(r.image) for r in records)}
    for name, draft in (("full", False), ("draft", True)):
        decoder = Decoder("json", cfg.model_copy(update={"jpeg_draft": draft}), model.pixels,
                          draft_size=model.image_size)  # fmt: skip
        times = []
        for r in records:
            start = time.perf_counter()
            decoder.pixels(r)
            times.append(time.perf_counter() - start)
        out[f"{name}_ms"] = 1000 * statistics.median(times)
    return out


def feed_capacity(bootstrap: str, topic: str, n: int, workers: int, threads: int,
                  mode: str = "threads", codec: str = "json",
                  group: str | None = None, pace: float = 0.0) -> dict:  # fmt: skip
    """Records/s from the topic through the decode pool into replay, nothing else per batch.

    `pace` > 0: once the queue is full, a batch taken every `pace` seconds, as a training
    thread would (intake under backpressure, refilling what is taken); then what counts is the
    CPU each of this process's threads spent per record (decode processes, with mode
    "processes", are not counted). The topic needs `kafka.queue_records` more than `n`."""
    torch.set_num_threads(threads)
    settings = settings_for("pixels", bootstrap, topic, codec, group)
    engine = build_engine(settings)
    records = settings.records.model_copy(update={"decode_mode": mode})
    pool = decode_pool(records, engine, workers)  # None: threads
    source = KafkaSource(settings.kafka, engine.decoder.decode, workers=workers, pool=pool)
    source.start(lambda _p, _g: None)
    stamps, got, refused = [], 0, 0
    batch, cpu = SHAPE["batch_size"], {}
    try:
        target = n
        while got < target:
            items = source.get(batch, timeout=30 if got else 120)  # first: the group join
            if not items:
                raise RuntimeError(f"feed stalled after {got} of {n} records")
            for item in items:
                if item.pair is None:
                    refused += 1
                else:
                    engine.replay.add(item.pair)  # the no-op step's only work
            got += len(items)
            stamps.append((time.perf_counter(), got))
            if pace and len(stamps) == WARMUP + 1:  # measured from a full queue: refills only
                while not source.stats().paused:
                    time.sleep(0.05)
                cpu, stamps[-1], target = thread_cpu(), (time.perf_counter(), got), got + n
            time.sleep(pace)
        spent = {k: v - cpu.get(k, 0.0) for k, v in thread_cpu().items()}
    finally:
        source.close()
    (t0, n0), (t1, n1) = stamps[WARMUP], stamps[-1]  # from the third batch: past group join
    out = {
        "workers": workers,
        "mode": mode,
        "codec": codec,
        "records": got,
        "refused": refused,
        "records_per_s": (n1 - n0) / (t1 - t0),
        "pace_s": pace,
    }
    if pace:
        out["cpu_ms_per_record"] = {k: 1000 * v / (n1 - n0) for k, v in spent.items() if v > 0}
    return out


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, by name (Linux), numbered names
    (decode-worker_0, _1, ...) summed."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = re.sub(r"[_-]?\d+$", "", names.get(int(tid), "other"))
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def overhead(store: str, n: int, threads: int) -> dict[str, Any]:
    """Learner steps on realistic pairs decoded up front; time outside the model per step."""
    torch.set_num_threads(threads)
    engine = build_engine(settings_for(store))
    pairs = [engine.to_pair(s) for s in web_records(n)]
    batch, rows = SHAPE["batch_size"], []
    for i in range(0, len(pairs) - batch + 1, batch):
        result = engine.learner.step(pairs[i : i + batch])
        rows.append((result.seconds, result.model_seconds))
    steady = rows[WARMUP:]
    return {
        "store": store,
        "steps": len(rows),
        "overhead_ms_median": 1000 * statistics.median(s - m for s, m in steady),
        "step_s_median": statistics.median(s for s, _ in steady),
        "model_s_median": statistics.median(m for _, m in steady),
        "replay_bytes_per_sample": engine.replay.nbytes / max(1, len(engine.replay)),
    }


def run(in_process, bootstrap: str, records: int, threads: int) -> dict[str, Any]:
    """Every figure in its own fresh process, the two sides of each comparison in one run."""
    out: dict[str, Any] = {"arch": ARCH, "shape": SHAPE, "records": records}
    out["decode"] = in_process(decode_ms, min(records, 200), 1)
    records_on_topic = web_records(records)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for rep, workers in itertools.product(range(REPEATS), (1, 2)):  # interleaved: same drift
        topic = f"feed-w{workers}-{rep}"
        publish(settings_for("pixels", bootstrap, topic).kafka, records_on_topic)
        runs[workers].append(in_process(feed_capacity, bootstrap, topic, records, workers,
                                        threads))  # fmt: skip
    for workers, rows in runs.items():
        out[f"feed_w{workers}"] = {
            "runs": rows,
            "records_per_s": statistics.median(r["records_per_s"] for r in rows),
        }
    out["feed_ratio_w2_over_w1"] = out["feed_w2"]["records_per_s"] / out["feed_w1"]["records_per_s"]
    steps = max(WARMUP + 3, min(records // SHAPE["batch_size"], 10))
    for store in ("encoded", "pixels"):
        out[f"overhead_{store}"] = in_process(overhead, store, steps * SHAPE["batch_size"],
                                              threads)  # fmt: skip
    return out


def markdown(feed: dict[str, Any]) -> list[str]:
    d, e, p = feed["decode"], feed["overhead_encoded"], feed["overhead_pixels"]
    return [
        "", f"## Feeding a GPU ({feed['arch']}: 224 px input; batch 64, 3 updates, 32 replayed)",
        "", "Records: web-sized JPEGs from real photos, median "
        f"{d['image_bytes_median'] / 1000:.0f} KB each (JSON-encoded on the topic).", "",
        "| figure | value |", "|---|---|",
        f"| decode + preprocess per image, full JPEG (1 thread) | {d['full_ms']:.1f} ms |",
        f"| decode + preprocess per image, JPEG draft (1 thread) | {d['draft_ms']:.1f} ms |",
        f"| feed capacity, 1 decode worker | {feed_runs(feed['feed_w1'])} |",
        f"| feed capacity, 2 decode workers | {feed_runs(feed['feed_w2'])} |",
        f"| feed capacity ratio 2 / 1 workers (medians of {REPEATS} runs each) | "
        f"{feed['feed_ratio_w2_over_w1']:.2f} |",
        f"| training-thread overhead per batch, store encoded | {e['overhead_ms_median']:.1f} ms |",
        f"| training-thread overhead per batch, store pixels | {p['overhead_ms_median']:.1f} ms |",
        f"| learner step / model work, encoded | {e['step_s_median']:.3f} / "
        f"{e['model_s_median']:.3f} s |",
        f"| learner step / model work, pixels | {p['step_s_median']:.3f} / "
        f"{p['model_s_median']:.3f} s |",
        f"| replay bytes per sample, encoded / pixels | {e['replay_bytes_per_sample']:.0f} / "
        f"{p['replay_bytes_per_sample']:.0f} |",
    ]  # fmt: skip


def feed_runs(fed: dict[str, Any]) -> str:
    each = ", ".join(f"{r['records_per_s']:.0f}" for r in fed["runs"])
    return f"{fed['records_per_s']:.0f} records/s (runs: {each})"


def compiled(results: list[dict]) -> list[str]:
    """throughput.py --compile: the bare step with learner.compile beside the plain one."""
    lines = []
    for r in (r for r in results if "bare_compiled" in r):
        c, plain = r["bare_compiled"], r["bare"]
        lines.append(
            f"\n{r['model']}, learner.compile: (a) {c['samples_per_s']:.1f} samples/s, "
            f"{r['ratio_compiled_over_bare']:.2f}x uncompiled; first step "
            f"{c['first_step_s']:.1f} s (compiling) vs {plain['first_step_s']:.1f} s."
        )
    return lines
