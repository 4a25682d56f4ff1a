"""The learner on a GPU: step time, FLOPs and MFU; and the ops proxy any machine can measure.

    python benchmarks/gpu.py --device cuda [--budget 300]     # on a GPU machine
    python benchmarks/gpu.py --device cpu --stages ops        # the CPU proxy, committed

Stages, each case in its own process (results written as they come, so a stage that fails or
runs out of time loses only itself):
- ops: one optimizer update of ViT-B-32 LoRA in bf16 (8 fresh + 4 replayed rows) under a
  TorchDispatchMode: non-view aten ops dispatched (about one kernel launch each on CUDA), the
  copies among them, and host read-backs (_local_scalar_dense, nonzero) in the update.
- step: the learner's bare step (score the fresh batch, then 3 updates of fresh + replayed rows,
  `replay.store: pixels` on the device) for ViT-B-32 and ViT-B-16 with random weights, LoRA and
  full, at the default shape (64 fresh, 32 replayed) and at batch 256 / replay 128. FLOPs of
  one step are counted with torch.utils.flop_counter (eagerly); MFU = FLOPs / median step time
  / PEAK. Then the same step with learner.compile on and reduce-overhead.
Writes <out>/throughput-<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

PEAK = 989e12  # dense bf16 FLOP/s of an H100/H200 SXM (datasheet): the MFU basis
COPIES = ("copy_", "_to_copy", "clone")
READBACKS = ("_local_scalar_dense", "nonzero", "item")
DEFAULT, LARGE = (64, 32), (256, 128)  # (fresh batch, replayed per update)
# (peft, shape, compile) per model, in order of importance: the budget may cut the tail
STEP_CASES = [("lora", DEFAULT, "off"), ("full", DEFAULT, "off"), ("lora", LARGE, "off"),
              ("full", LARGE, "off"), ("lora", DEFAULT, "on"),
              ("lora", DEFAULT, "reduce-overhead")]  # fmt: skip


def engine_for(arch: str, mode: str, shape: tuple[int, int], device: str, compile_: str,
               steps_per_batch: int = 3):  # fmt: skip
    from streamer.config import Settings
    from streamer.service.pipeline import build_engine

    batch, replayed = shape
    return build_engine(Settings.model_validate({
        "model": {"arch": arch, "peft": {"mode": mode}},
        "learner": {"batch_size": batch, "replay_per_step": replayed,
                    "steps_per_batch": steps_per_batch, "device": device, "precision": "bf16",
                    "compile": compile_},
        "replay": {"capacity": 2000, "store": "pixels", "on_device": device != "cpu"},
        "evaluation": {"probe_fraction": 0.0, "eval_every": 10**9},
        "logging": {"level": "WARNING"},
    }))  # fmt: skip


def pairs_for(n: int, size: int, seed: int = 0) -> list:
    """n labelled pairs over 10 classes with random uint8 pixels: the step's cost does not
    depend on what the pictures show."""
    from streamer.records import Pair, Sample

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
              "bag", "ankle boot"]  # fmt: skip
    return [Pair(Sample(f"s{i}", b"", labels[i % 10], labels[i % 10]), pixels[i])
            for i in range(n)]  # fmt: skip


# -- ops -----------------------------------------------------------------------------------------
def measure_ops(device: str) -> dict[str, Any]:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    engine = engine_for("ViT-B-32", "lora", (8, 4), device, "off", steps_per_batch=1)
    learner = engine.learner
    pairs = pairs_for(32, engine.model.image_size or 224)
    for pair in pairs[16:]:
        engine.replay.add(pair)
    learner.step(pairs[:8])  # warm: allocations, first calls
    fresh = pairs[8:16]
    learner._batches.stage(fresh, 4)
    drawn = [learner._as_pair(e) for e in learner.replay.sample(4)]
    pixels = learner._batches.join(drawn)
    counter = Count()
    with counter:
        learner._update([*fresh, *drawn], pixels)
    ops = counter.ops
    total = sum(ops.values())
    copies = sum(ops[k] for k in COPIES)
    return {"stage": "ops", "device": device, "model": "ViT-B-32", "peft": "lora",
            "precision": "bf16", "rows": "8 fresh + 4 replayed", "non_view_ops": total,
            "copies": copies, "copy_share": copies / total,
            "readbacks": sum(ops[k] for k in READBACKS), "top": ops.most_common(12)}  # fmt: skip


# -- step ----------------------------------------------------------------------------------------
def measure_step(arch: str, mode: str, shape: tuple[int, int], device: str, compile_: str,
                 repeats: int, count_flops: bool) -> dict[str, Any]:  # fmt: skip
    from torch.utils.flop_counter import FlopCounterMode

    engine = engine_for(arch, mode, shape, device, compile_)
    batch, replayed = shape
    size = engine.model.image_size or 224
    pairs = pairs_for(batch * (repeats + 4) + 2000, size)
    for pair in pairs[: min(2000, max(replayed * 4, 512))]:
        engine.replay.add(pair)
    fresh = pairs[2000:]
    batches = [fresh[i * batch : (i + 1) * batch] for i in range(repeats + 4)]
    started = time.perf_counter()
    for b in batches[:3]:  # warm: allocator, cuDNN/cuBLAS choices, compilation
        engine.learner.step(b)
    warmup = time.perf_counter() - started
    flops = None
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            engine.learner.step(batches[3])
        flops = counter.get_total_flops()
    seconds = []
    for b in batches[4:]:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.learner.step(b)  # ends in one read-back: the step's work is done
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    row = {"stage": "step", "model": arch, "peft": mode, "batch": batch, "replayed": replayed,
           "updates": 3, "compile": compile_, "device": device, "median_step_s": median,
           "min_step_s": min(seconds), "max_step_s": max(seconds), "repeats": len(seconds),
           "records_per_s": batch / median,
           "image_passes_per_s": (batch * 4 + replayed * 3) / median,
           "warmup_s": warmup, "flops_per_step": flops}  # fmt: skip
    if device == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


# -- driver --------------------------------------------------------------------------------------
def run_case(args: argparse.Namespace, case: list[str], timeout: float) -> dict[str, Any]:
    """One case in a fresh process; a failure or a timeout is recorded, not raised."""
    cmd = [sys.executable, __file__, "--device", args.device, "--case", json.dumps(case),
           "--repeats", str(args.repeats)]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": case, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"case": case, "error": (done.stderr or done.stdout)[-1500:]}
    return json.loads(lines[-1])


def with_mfu(rows: list[dict[str, Any]]) -> None:
    """FLOPs are counted eagerly; a compiled case does the same work as its eager twin."""
    key = lambda r: (r.get("model"), r.get("peft"), r.get("batch"), r.get("replayed"))  # noqa: E731
    flops = {key(r): r["flops_per_step"] for r in rows if r.get("flops_per_step")}
    for r in rows:
        if r.get("stage") == "step" and r["device"] == "cuda" and key(r) in flops:
            r["flops_per_step"] = flops[key(r)]
            r["tflops_per_s"] = flops[key(r)] / r["median_step_s"] / 1e12
            r["mfu"] = flops[key(r)] / r["median_step_s"] / PEAK


def render(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"# Learner on {machine['device_name']}", "", f"Command: `{result['command']}`  ",
             f"torch {machine['torch']}, {machine['platform']}; MFU against "
             f"{PEAK / 1e12:.0f} TFLOP/s dense bf16.", ""]  # fmt: skip
    for r in result["rows"]:
        if r.get("stage") == "ops":
            lines += [f"**Ops per update** ({r['model']} {r['peft']} {r['precision']}, "
                      f"{r['rows']}, {r['device']}): {r['non_view_ops']} non-view aten ops, "
                      f"{r['copies']} copies ({r['copy_share']:.1%}), {r['readbacks']} "
                      "read-backs.", ""]  # fmt: skip
    lines += ["| model | peft | batch / replayed | compile | step s (median) | records/s | "
              "TFLOP/s | MFU | warm-up s | peak GiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        if r.get("stage") == "step":
            mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
            tf = f"{r['tflops_per_s']:.0f}" if "tflops_per_s" in r else "n/a"
            gib = r.get("peak_memory_gib", 0)
            lines.append(f"| {r['model']} | {r['peft']} | {r['batch']} / {r['replayed']} | "
                         f"{r['compile']} | {r['median_step_s']:.3f} | "
                         f"{r['records_per_s']:.0f} | {tf} | {mfu} | {r['warmup_s']:.0f} | "
                         f"{gib:.1f} |")  # fmt: skip
        elif "error" in r:
            lines.append(f"| {' / '.join(map(str, r['case']))} | failed: "
                         f"{r['error'].strip().splitlines()[-1][:120]} ||||||||")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stages", default="ops,step", help="comma-separated: ops, step")
    parser.add_argument("--repeats", type=int, default=8, help="timed steps per case")
    parser.add_argument("--models", nargs="+", default=["ViT-B-16", "ViT-B-32"])
    parser.add_argument("--peft", nargs="+", default=["lora", "full"])
    parser.add_argument("--compile", nargs="+", default=["off", "on", "reduce-overhead"])
    parser.add_argument("--shapes", nargs="+", default=["default", "large"])
    parser.add_argument("--budget", type=float, default=300, help="seconds for all cases")
    parser.add_argument("--case-timeout", type=float, default=150)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case:
        case = json.loads(args.case)
        if case[0] == "ops":
            row = measure_ops(args.device)
        else:
            arch, mode, shape, compile_ = case
            row = measure_step(arch, mode, tuple(shape), args.device, compile_, args.repeats,
                               count_flops=compile_ == "off")  # fmt: skip
        print(json.dumps(row))
        return
    cases: list[list] = [["ops"]] if "ops" in args.stages else []
    if "step" in args.stages:
        chosen = [c for c in STEP_CASES if c[0] in args.peft and c[2] in args.compile
                  and (c[1] == DEFAULT or "large" in args.shapes)]  # fmt: skip
        cases += [[arch, *c] for c in chosen for arch in args.models]
    name = "cuda" if args.device == "cuda" else args.device
    machine = {"device_name": torch.cuda.get_device_name() if args.device == "cuda"
               else platform.processor() or "CPU", "torch": torch.__version__,
               "platform": platform.platform(), "cpus": torch.get_num_threads()}  # fmt: skip
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "machine": machine,
                              "rows": []}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    for case in cases:
        left = deadline - time.monotonic()
        if left < 20:
            result["rows"].append({"case": case, "error": "skipped: out of the time budget"})
            continue
        row = run_case(args, case, min(args.case_timeout, left))
        result["rows"].append(row)
        with_mfu(result["rows"])
        (args.out / f"throughput-{name}.json").write_text(json.dumps(result, indent=2))
        (args.out / f"throughput-{name}.md").write_text(render(result))
        print(json.dumps(row)[:400], flush=True)


if __name__ == "__main__":
    main()
