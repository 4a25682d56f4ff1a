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
does not blur as it does intervals; the other steps' p95 and largest excess over the median
(bare's too): the noise of a shared machine, which the checkpoint figures are read against;
the same over the median of the 5 steps before each (a shared machine has phases of seconds
in which every step is slower, bare's too); and the mean rate from the third step to the
last (records trained over wall time, checkpoints included), over bare's. `--rounds N`
alternates bare and daemon N times (a shared machine drifts by several percent over
minutes). Both stages freeze start-up's objects for the cyclic GC (`settle_heap`) before
their first step. `--from-json RUN.json` pools a finished run's rounds again (and its .md).

    .venv/bin/python benchmarks/stall.py --model streamer-demo --peft lora --seconds 40 \
        --every 10 --rounds 4 --foreground --out-json benchmarks/results/stall-cpu-lora.json
    (GPU: see benchmarks/README.md, "On a GPU node")
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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
from streamer.service.daemon import Daemon, settle_heap
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
    settle_heap()  # as the daemon does before its first step
    stamps: list[float] = []
    with Collections() as pauses:
        while len(stamps) <= WARMUP or stamps[-1] - stamps[WARMUP] < seconds:
            engine.learner.step(next(batches))
            stamps.append(time.perf_counter())
    rate = batch * (len(stamps) - 1 - WARMUP) / (stamps[-1] - stamps[WARMUP])
    steady = [b - a for a, b in itertools.pairwise(stamps[WARMUP:])]
    median = statistics.median(steady)
    return {"records_per_s": rate, "median_interval_s": median, "steps": len(stamps),
            **_spread("other", [g - median for g in steady]), "gc": pauses.summary(),
            "intervals_ms": [round(1000 * g, 1) for g in steady]}  # fmt: skip


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
    writer: list[float] = []  # the writer thread's CPU time per background checkpoint
    real_write = d.persistence._write

    def timed(*a, **k):
        started = time.thread_time()
        try:
            return real_write(*a, **k)
        finally:
            writer.append(time.thread_time() - started)

    d.persistence._write = timed  # type: ignore[method-assign]
    d.on_step = on_step
    with Collections() as pauses:
        d.run()
    out = summary(stamps, marks[:-1], d)  # the last: the final one, after the run
    out["held_s"], out["gc"] = held[:-1], pauses.summary()
    out["held_s_median"] = statistics.median(held[:-1]) if len(held) > 1 else None
    out["held_s_max"] = max(held[:-1], default=None)
    out["writer_cpu_s"] = writer
    return out


def summary(stamps: dict, marks: list[int], d: Daemon) -> dict[str, Any]:
    steps = sorted(stamps)[WARMUP:]
    gaps = {s: stamps[s][0] - stamps[s - 1][0] for s in steps[1:]}
    median = statistics.median(gaps.values())
    around = [{"step": m, "boundary_over_median_s": gaps[m + 1] - median,
               "worst_next3_over_median_s": max(gaps.get(m + k, median) for k in (2, 3, 4))
               - median} for m in marks if m + 1 in gaps]  # fmt: skip
    near = _near(marks)
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
        "median_boundary_over_median_s": statistics.median(
            [a["boundary_over_median_s"] for a in around]) if around else None,
        **_spread("other", [g - median for s, g in gaps.items() if s not in near]),
        "intervals_ms": {s: round(1000 * g, 1) for s, g in gaps.items()},
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
    add("--rounds", type=int, default=1, help="Bare and daemon stages alternated this often.")
    add("--threads", type=int, default=2)
    add("--out-json", type=Path, default=Path("benchmarks/results/stall.json"))
    add("--from-json", type=Path, help="Pool a finished run's rounds again (its .md, its stages).")
    args = parser.parse_args()
    if args.from_json:
        done = json.loads(args.from_json.read_text())
        done["stages"] = pooled(done["rounds"])
        args.from_json.write_text(json.dumps(done, indent=1) + "\n")
        args.from_json.with_suffix(".md").write_text(markdown(done) + "\n")
        return
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"command": " ".join(["benchmarks/stall.py", *sys.argv[1:]]),
                           "machine": machine(args), "stages": {}}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="streamer-stall-"))
    with EmbeddedBroker() as broker:
        modes = [True, False] if args.foreground else [True]
        stamp = int(time.time())
        make = [{bg: settings_for(args, f"stall-{'bg' if bg else 'fg'}-{stamp}-{r}",
                                  broker.bootstrap, tmp, bg) for bg in modes}
                for r in range(args.rounds)]  # fmt: skip
        kafkas = [settings[bg].kafka for settings in make for bg in modes]
        started = time.monotonic()
        producers: list[threading.Thread] = []
        if args.rate:  # provisioned up front: produced while bare runs
            producers = produce(args, args.rate, kafkas, out)
        rounds: list[dict[str, Any]] = []
        for settings in make:  # bare and daemon alternate: drift falls on both
            stages = {"bare": in_process(bare, settings[True], args.seconds, args.records,
                                         args.threads)}  # fmt: skip
            print(json.dumps(stages["bare"]), flush=True)
            if not producers:
                producers = produce(args, stages["bare"]["records_per_s"], kafkas, out)
            for p in producers:
                p.join()
            for bg in modes:
                name = "daemon_background" if bg else "daemon_foreground"
                stage = in_process(daemon, settings[bg], args.seconds, args.records, args.threads)
                stage["over_bare"] = stage["records_per_s"] / stages["bare"]["records_per_s"]
                stages[name] = stage
                print(json.dumps(stage), flush=True)
            rounds.append(stages)
        out["rounds"], out["stages"] = rounds, pooled(rounds)
        out["wall_s"] = time.monotonic() - started
    shutil.rmtree(tmp, ignore_errors=True)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(out, indent=1) + "\n")
    args.out_json.with_suffix(".md").write_text(markdown(out) + "\n")
    print(markdown(out))


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Every round's stages as one: rates and ratios as the median over rounds, step
    intervals as excess over their own round's median, pooled."""
    out: dict[str, Any] = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        stage: dict[str, Any] = {
            "records_per_s": statistics.median(r["records_per_s"] for r in runs),
            "median_interval_s": statistics.median(r["median_interval_s"] for r in runs),
            "rounds": len(runs), "steps": sum(r["steps"] for r in runs),
        }  # fmt: skip
        if name == "bare":
            excess = [g - r["median_interval_s"] for r in runs for g in _gaps(r).values()]
            local = [x for r in runs for x in _over_before(_gaps(r)).values()]
            out[name] = {**stage, **_spread("other", excess), **_spread("local", local)}
            continue
        checkpoints = [c for r in runs for c in r["checkpoints"]]
        boundary = [c["boundary_over_median_s"] for c in checkpoints]
        held = [h for r in runs for h in r["held_s"]]
        cpu = [c for r in runs for c in r.get("writer_cpu_s", [])]
        other, local, local_other = [], [], []
        for r in runs:
            near = _near([c["step"] for c in r["checkpoints"]])
            gaps = _gaps(r)
            other += [g - r["median_interval_s"] for s, g in gaps.items() if s not in near]
            before = _over_before(gaps)
            local += [before[c["step"] + 1] for c in r["checkpoints"] if c["step"] + 1 in before]
            local_other += [x for s, x in before.items() if s not in near]
        out[name] = {
            **stage, "checkpoints": checkpoints,
            "over_bare": statistics.median(r["over_bare"] for r in runs),
            "over_bare_rounds": [r["over_bare"] for r in runs],
            "median_boundary_over_median_s": statistics.median(boundary) if boundary else None,
            "max_boundary_over_median_s": max(boundary, default=None),
            "max_next3_over_median_s": max((c["worst_next3_over_median_s"] for c in checkpoints),
                                           default=None),
            "held_s_median": statistics.median(held) if held else None,
            "held_s_max": max(held, default=None), **_spread("other", other),
            "median_boundary_over_local_s": statistics.median(local) if local else None,
            "max_boundary_over_local_s": max(local, default=None),
            **_spread("local", local_other),
            "writer_cpu_s_median": statistics.median(cpu) if cpu else None,
            "writer_cpu_s_max": max(cpu, default=None),
        }  # fmt: skip
    return out


def _gaps(run: dict[str, Any]) -> dict[int, float]:
    """A stage's step intervals in seconds by step (bare's list counts from its first)."""
    ms = run["intervals_ms"]
    pairs = enumerate(ms) if isinstance(ms, list) else ((int(k), v) for k, v in ms.items())
    return {step: v / 1000 for step, v in pairs}


def _over_before(gaps: dict[int, float], k: int = 5) -> dict[int, float]:
    """Each interval over the median of the k before it: a checkpoint's own cost, read apart
    from the phases of several seconds in which a shared machine runs every step slower
    (bare has them too)."""
    out = {}
    for step, gap in gaps.items():
        before = [gaps[s] for s in range(step - k, step) if s in gaps]
        if len(before) == k:
            out[step] = gap - statistics.median(before)
    return out


def _near(marks: list[int]) -> set[int]:
    """Steps whose interval holds a checkpoint's boundary, or is one of the next three."""
    return {m + k for m in marks for k in (1, 2, 3, 4)}


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
             f"{bare_.get('rounds', 1)} round(s), bare and daemon alternated, each stage a fresh "
             "process: records/s and / bare are medians over rounds (each round's ratio in "
             "brackets); step intervals are taken over their own round's median, then pooled.",
             "",
             "| stage | records/s (mean, whole run) | / bare | median step interval s | "
             "checkpoints | step holding the boundary over median, median / max ms | next 3 "
             "over median, max ms | other steps over median, p95 / max ms | boundary step over "
             "the 5 before it, median / max ms | other steps over the 5 before, p95 / max ms | "
             "training thread held, median / max ms | writer thread CPU, median / max ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| bare | {bare_['records_per_s']:.1f} | 1.00 | {bare_['median_interval_s']:.3f} "
             f"| – | – | – | {_pair(bare_, 'other_p95', 'other_max')} | – | "
             f"{_pair(bare_, 'local_p95', 'local_max')} | – | – |"]  # fmt: skip
    for name in ("daemon_background", "daemon_foreground"):
        s = out["stages"].get(name)
        if s is None:
            continue
        snap = (f"{1000 * s['held_s_median']:.0f} / {1000 * s['held_s_max']:.0f}"
                if s.get("held_s_median") is not None else "–")  # fmt: skip
        ratios = ", ".join(f"{r:.2f}" for r in s.get("over_bare_rounds", []))
        lines.append(
            f"| {name.replace('_', ', ')} | {s['records_per_s']:.1f} | {s['over_bare']:.2f}"
            f"{f' ({ratios})' if len(s.get('over_bare_rounds', [])) > 1 else ''} | "
            f"{s['median_interval_s']:.3f} | {len(s['checkpoints'])} | "
            f"{_pair(s, 'median_boundary', 'max_boundary')} | "
            f"{_ms(s['max_next3_over_median_s'])} | {_pair(s, 'other_p95', 'other_max')} | "
            f"{_pair(s, 'median_boundary', 'max_boundary', '_over_local_s')} | "
            f"{_pair(s, 'local_p95', 'local_max')} | {snap} | "
            f"{_pair(s, 'writer_cpu_s_median', 'writer_cpu_s_max', suffix='')} |"
        )
    return "\n".join(lines)


class Collections:
    """The cyclic GC's pauses while it is entered (any thread's: they stop them all)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def _note(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def __enter__(self) -> Collections:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._note)

    def summary(self) -> dict[str, list[float]]:
        """Per generation: [collections, total ms, longest ms]."""
        out = {}
        for gen in range(3):
            ms = [1000 * t for g, t in self.pauses if g == gen]
            out[str(gen)] = [len(ms), round(sum(ms), 1), round(max(ms, default=0.0), 1)]
        return out


def _spread(name: str, excess: list[float]) -> dict[str, float | None]:
    """How far steps run over the median: the noise a checkpoint's figures are read against."""
    ranked = sorted(excess)
    p95 = ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))] if ranked else None
    return {
        f"{name}_p95_over_median_s": p95,
        f"{name}_max_over_median_s": max(ranked, default=None),
    }


def _pair(stage: dict, first: str, second: str, suffix: str = "_over_median_s") -> str:
    a, b = (stage.get(f"{k}{suffix}") for k in (first, second))
    if not suffix:  # durations, not excesses: no sign
        return "–" if a is None else f"{1000 * a:.0f} / {1000 * b:.0f}"
    return f"{_ms(a)} / {_ms(b)}"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1000 * seconds:+.0f}"


if __name__ == "__main__":
    main()
