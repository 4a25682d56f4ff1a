"""The from-a-base settings of benchmarks/quality.py: strategies compared on one stream.

Per seed: the tiny base pretrained on 20,000 Fashion-MNIST samples (every parameter, SIT; as
the misalignment scenarios), then a stream of new labels (benchmarks/streams.py: the digits,
or the held-out classes then the digits), one pass, LoRA rank 4 on both towers, lr 1e-3,
batch 32, 3 updates per batch, 32 replayed per update from 1,000 (where replay is on); 10% of
the stream held out as probes; 200 Fashion-MNIST images of the base's classes it never
trained on pinned as the `reference` window (retention). ZSCL's logits term distils on, and
rehearsal rehearses, 500 other unseen images of the base's classes (the base's domain, as
ZSCL uses ImageNet), never the reference probes.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from streams import SETTINGS, Setting

from streamer.config import Settings
from streamer.records import Sample
from streamer.service.pipeline import build_engine, run_stream

DIGITS = SETTINGS["digits"]

METHODS: dict[str, dict[str, Any]] = {
    "sit+replay": {},
    "+structure(ema)": {"learner": {"regularizer": {"kind": "structure", "teacher": "ema"}}},
    "+logits(base)": {"learner": {"regularizer": {"kind": "logits", "teacher": "base",
                                                  "source": "manifest"}}},
    "+l2(base)": {"learner": {"regularizer": {"kind": "l2", "teacher": "base"}}},
    "+EMA weights": {"learner": {"serve": "ema"}},
    "+WiSE-FT 0.5": {"learner": {"serve": "wise", "wise_alpha": 0.5}},
    "per_window replay": {"replay": {"policy": "per_window"}},
    "asymmetric+replay": {"learner": {"loss": "asymmetric"}},
    "naive": {"learner": {"loss": "clip", "replay_per_step": 0}, "replay": {"capacity": 0}},
    "+rehearsal": {"learner": {"rehearse": {"per_update": 32, "distill": 1.0}}},
}  # fmt: skip
# The bounds: the base untrained, and joint training (offline: every training sample of the
# stream, shuffled, JOINT_EPOCHS times, one update per batch: as many updates as a streaming
# run with 3 per batch; SIT, the same LoRA), the ceiling on the new data; and joint training
# rehearsing the base's domain as +rehearsal does, what offline training keeps of the base.
BOUNDS = {
    "base": {},
    "joint": {"learner": {"replay_per_step": 0, "steps_per_batch": 1}, "replay": {"capacity": 0}},
    "joint + rehearsal": {
        "learner": {
            "replay_per_step": 0,
            "steps_per_batch": 1,
            "rehearse": {"per_update": 32, "distill": 0.0},
        },
        "replay": {"capacity": 0},
    },
}
JOINT_EPOCHS = 3
_LOGITS = {"kind": "logits", "teacher": "base", "source": "manifest"}
# One knob at a time, for the frontier (`--methods` picks any of them by name).
SWEEP: dict[str, dict[str, Any]] = {
    **{f"l2(base) {w:g}": {"learner": {"regularizer": {"kind": "l2", "weight": w}}}
       for w in (0.03, 0.1, 0.3, 1.0)},
    **{f"logits(base) {w:g}": {"learner": {"regularizer": {**_LOGITS, "weight": w}}}
       for w in (0.3, 1.0, 3.0)},
    **{f"logits(base, +new labels) {w:g}": {"learner": {"regularizer": {
        **_LOGITS, "weight": w, "texts": "reference+batch"}}} for w in (0.3, 1.0, 3.0, 10.0)},
    **{f"WiSE-FT {a:g}": {"learner": {"serve": "wise", "wise_alpha": a}}
       for a in (0.3, 0.5, 0.7)},
    "text tower frozen": {"model": {"peft": {"towers": "image"}}},
    "rank 16": {"model": {"peft": {"rank": 16, "alpha": 16.0}}},
    "lr 3e-4": {"learner": {"lr": 3e-4}},
    **{f"rehearsal {k}, distill {w:g}": {"learner": {"rehearse": {"per_update": k,
                                                                   "distill": w}}}
       for k in (16, 32, 64, 128) for w in (0.0, 0.3, 1.0, 3.0)},
    "replay 64": {"learner": {"replay_per_step": 64}},
    "rehearsal 64, distill 0.3, replay 64": {"learner": {
        "rehearse": {"per_update": 64, "distill": 0.3}, "replay_per_step": 64}},
    "rehearsal 64, distill 0.3, rank 16": {"model": {"peft": {"rank": 16, "alpha": 16.0}},
        "learner": {"rehearse": {"per_update": 64, "distill": 0.3}}},
    "rehearsal 32, distill 0.3, text tower frozen": {"model": {"peft": {"towers": "image"}},
        "learner": {"rehearse": {"per_update": 32, "distill": 0.3}}},
    "rehearsal 32, distill 1, rank 16": {"model": {"peft": {"rank": 16, "alpha": 16.0}},
                                         "learner": {"rehearse": {"per_update": 32}}},
    "rehearsal 32, distill 1, no replay": {"learner": {"rehearse": {"per_update": 32},
                                                       "replay_per_step": 0},
                                           "replay": {"capacity": 0}},
    "rehearsal 32, distill 0 + WiSE-FT 0.7": {"learner": {
        "rehearse": {"per_update": 32, "distill": 0.0}, "serve": "wise", "wise_alpha": 0.7}},
}  # fmt: skip
ALL = {**BOUNDS, **METHODS, **SWEEP}


def settings(
    method: str, base: Path, distill: Path, seed: int, device: str, setting: Setting
) -> Settings:
    config: dict[str, dict[str, Any]] = {
        "model": {"arch": "streamer-tiny", "pretrained": str(base), "peft": {"mode": "lora"}},
        "learner": {"lr": 1e-3, "batch_size": 32, "steps_per_batch": 3, "replay_per_step": 32,
                    "seed": seed, "device": device},
        "replay": {"capacity": 1000, "seed": seed},
        "evaluation": {"probe_fraction": 0.1, "probe_per_window": 100, "min_probes": 20,
                       "eval_every": setting.eval_every},
    }  # fmt: skip
    for section, fields in ALL[method].items():
        config[section] = _merge(config.get(section, {}), fields)
    reg = config["learner"].get("regularizer")
    if reg is not None and reg.get("source") == "manifest":
        reg["manifest"] = str(distill)
    if "rehearse" in config["learner"]:
        config["learner"]["rehearse"]["manifest"] = str(distill)
    return Settings.model_validate(config)


def _merge(a: dict, b: dict) -> dict:
    return {**a, **{k: _merge(a.get(k, {}), v) if isinstance(v, dict) else v
                    for k, v in b.items()}}  # fmt: skip


def run(
    method: str, base: Path, distill: Path, seed: int, device: str, setting: Setting = DIGITS
) -> dict[str, Any]:
    torch.manual_seed(seed)
    engine = build_engine(settings(method, base, distill, seed, device, setting))
    engine.evaluator = _with_reference(engine, setting.reference(seed))
    steps: list[float] = []
    stream = setting.stream(seed)
    if method == "base":
        final = _untrained(engine, stream)
    else:
        if method in BOUNDS:  # joint, i.i.d.: every epoch in its own seeded order
            stream = [
                s
                for e in range(JOINT_EPOCHS)
                for s in random.Random(f"joint-{seed}-{e}").sample(stream, len(stream))
            ]
        run_stream(engine, stream, 32, lambda result, _: steps.append(result.seconds))
        final = engine.evaluate()
    stream_windows = [w for w in final.accuracy if w != "reference"]
    d = final.diagnosis
    own_now, own_base = _reference_among_own_labels(engine)
    return {
        "method": method, "seed": seed, "setting": setting.name, "a_auc": final.a_auc,
        "a_last": statistics.mean(final.accuracy.values()) if method == "base" else final.a_last,
        "new_accuracy": statistics.mean(final.accuracy[w] for w in stream_windows)
        if stream_windows else math.nan,
        "average_forgetting": final.average_forgetting, "bwt": final.bwt,
        "retention": 0.0 if method == "base" else final.retention.get("reference", math.nan),
        "reference": final.accuracy.get("reference", math.nan),
        "retention_own_labels": own_now - own_base, "reference_own_labels": own_now,
        "deficit": d.deficit if d else math.nan, "lost": d.lost if d else math.nan,
        "blame": d.blame if d else None, "misaligned": final.misaligned,
        "collapse": d.collapse if d else math.nan,
        "step_seconds": statistics.median(steps[2:]) if len(steps) > 2 else math.nan,
    }  # fmt: skip


def _untrained(engine, stream: list[Sample]):
    """The base's evaluation: the same probes held out, nothing trained, every label known."""
    for sample in stream:
        if engine.evaluator.is_probe(sample):
            engine.evaluator.add_probe(sample)
    labels = list(dict.fromkeys(s.prompt(engine.learner.cfg.prompt_template) for s in stream))
    with engine.serving():
        return engine.evaluator.evaluate(labels)


def _reference_among_own_labels(engine) -> tuple[float, float]:
    """Reference accuracy (served model, and base) with only the base's labels as candidates:
    what the base's features still separate, without the new labels competing."""
    evaluator = engine.evaluator
    samples = evaluator.probes["reference"].items()
    with engine.serving():
        emb = evaluator.embeddings.embed(samples)
        labels = list(dict.fromkeys(emb.texts))
        now = evaluator.embeddings.hits(emb, labels, base=False)
        base = evaluator.embeddings.hits(emb, labels, base=True)
    return statistics.mean(now), statistics.mean(base)


def _with_reference(engine, reference: list[Sample]):
    from streamer.evaluation.evaluate import Evaluator

    cfg = engine.evaluator.cfg
    return Evaluator(cfg, engine.model, engine.decoder.pixels,
                     engine.learner.cfg.prompt_template, reference)  # fmt: skip


def main(args, write) -> None:
    """Every method on every seed (`args.jobs` runs at once, each in its own process of
    `args.threads` threads), then step times side by side; `write(results, steps, seconds)`
    renders them. `args.bases`: a folder to keep the pretrained bases in (one per seed,
    reused when there), else a temporary one."""
    started = time.monotonic()
    methods = args.methods or [*BOUNDS, *METHODS]
    setting = SETTINGS["digits" if args.setting == "from-base" else args.setting]
    jobs = getattr(args, "jobs", 1)
    with (tempfile.TemporaryDirectory() as tmp,  # bases, distillation images: not results
          ProcessPoolExecutor(jobs, initializer=torch.set_num_threads,
                              initargs=(args.threads,)) as pool):  # fmt: skip
        folder = Path(getattr(args, "bases", None) or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        bases = {seed: folder / f"base-{setting.name}-{seed}.safetensors" for seed in args.seeds}
        missing = [pool.submit(setting.pretrain, b, s) for s, b in bases.items() if not b.exists()]
        for future in missing:
            future.result()
        distill = {seed: setting.distill_manifest(Path(tmp), seed) for seed in args.seeds}
        runs = [
            pool.submit(run, m, bases[seed], distill[seed], seed, args.device, setting)
            for seed in args.seeds
            for m in methods
        ]
        results = []
        for future in runs:  # in submission order: seed by seed, method by method
            results.append(future.result())
            print(_line(results[-1], time.monotonic() - started), flush=True)
        last = args.seeds[-1]
        trained = list(dict.fromkeys(["sit+replay", *(m for m in methods if m != "base")]))
        steps = (step_times(trained, bases[last], distill[last], setting)
                 if getattr(args, "step_times", True) else {})  # fmt: skip
    if getattr(args, "also", None):
        results, steps = merged(args.also, results, steps)
    write(results, steps, time.monotonic() - started)


def merged(path: Path, results: list[dict], steps: dict[str, float]) -> tuple[list, dict]:
    """An earlier run's results (a quality-*.json) beside these: its step times scaled so
    that each method keeps its ratio to sit+replay measured in its own run."""
    earlier = json.loads(Path(path).read_text())
    before = earlier.get("step_seconds") or {}
    scale = (steps["sit+replay"] / before["sit+replay"]
             if "sit+replay" in steps and "sit+replay" in before else None)  # fmt: skip
    scaled = {m: t * scale for m, t in before.items() if m not in steps} if scale else {}
    return [*earlier["runs"], *results], {**scaled, **steps}


def step_times(
    methods: list[str], base: Path, distill: Path, setting: Setting, rounds: int = 15
) -> dict:
    """Median seconds of one learner step per method, the methods interleaved round by round
    on the same batches, so a load that comes and goes on a shared machine hits all alike."""
    stream = setting.stream(0)
    engines = {}
    for method in methods:
        engine = build_engine(settings(method, base, distill, 0, "cpu", setting))
        for s in stream[:200]:  # a full replay buffer and references to draw from
            engine.replay.add(s)
        engines[method] = engine
    times: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(rounds + 2):
        batch = stream[200 + 32 * i : 232 + 32 * i]
        for method, engine in engines.items():
            started = time.perf_counter()
            engine.learner.step([engine.to_pair(s) for s in batch])
            if i >= 2:  # two warm-up rounds
                times[method].append(time.perf_counter() - started)
    return {m: statistics.median(v) for m, v in times.items()}


def _line(r: dict[str, Any], seconds: float) -> str:
    return (f"{r['setting']} seed {r['seed']} {r['method']:18s} A_last {r['a_last']:.3f} new "
            f"{r['new_accuracy']:.3f} retention {r['retention']:+.3f} (own labels "
            f"{r['retention_own_labels']:+.3f}) deficit {r['deficit']:.3f} step "
            f"{r['step_seconds']:.3f} s ({seconds:.0f} s)")  # fmt: skip
