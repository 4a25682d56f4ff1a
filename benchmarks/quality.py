"""Learning quality against baselines, through the learner and evaluator the daemon uses.

Fashion-MNIST as 5 class-incremental tasks of 2 classes, and a blurry variant (10% of each
task's samples moved to other tasks), from random weights, several seeds. The default model is
streamer-tiny (the 2-core `make bench` budget); `--model streamer-demo` is the demo's model:

- frozen:          no updates (the model as loaded);
- naive:           `clip` loss, no replay (what fine-tuning on the stream would do);
- asymmetric+replay: image->text loss over seen labels, with replay (what SIT fixes);
- sit:             SIT, no replay;
- sit+replay:      SIT with replay (ours);
- joint:           the same samples shuffled i.i.d. into one task, with replay: the same
                   updates and compute as sit+replay (the upper bound).

Reported per method (mean ± std over seeds): A_auc, A_last, average forgetting, BWT, final
modality gap and misalignment score; an accuracy-over-time plot per variant.

    .venv/bin/python benchmarks/quality.py [--seeds 0 1 2] [--per-class 400]
        [--model streamer-demo] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from streamer import __version__
from streamer.config import Settings, StreamConfig
from streamer.dev import datasets
from streamer.records import Sample
from streamer.service.pipeline import build_engine, run_stream

METHODS: dict[str, dict[str, Any]] = {
    "frozen": {"loss": "sit", "replay": 0, "frozen": True},
    "naive": {"loss": "clip", "replay": 0},
    "asymmetric+replay": {"loss": "asymmetric", "replay": 1000},
    "sit": {"loss": "sit", "replay": 0},
    "sit+replay": {"loss": "sit", "replay": 1000},
    "joint": {"loss": "sit", "replay": 1000, "iid": True},
}
VARIANTS = {"class-incremental": 0.0, "blurry": 0.1}
COLOURS = {"frozen": "grey", "naive": "tab:blue", "asymmetric+replay": "tab:orange",
           "sit": "tab:green", "sit+replay": "tab:red", "joint": "black"}  # fmt: skip


def settings_for(method: dict[str, Any], args, seed: int) -> Settings:
    return Settings.model_validate({
        "model": {"arch": args.model, "peft": {"mode": "full"}},
        "learner": {"loss": method["loss"], "lr": args.lr, "batch_size": args.batch_size,
                    "steps_per_batch": args.steps_per_batch,
                    "replay_per_step": args.replay_per_step if method["replay"] else 0,
                    "device": args.device, "seed": seed},
        "replay": {"capacity": method["replay"], "seed": seed},
        "evaluation": {"probe_fraction": 0.05, "probe_per_window": 100,
                       "eval_every": args.eval_every},
    })  # fmt: skip


def run(name: str, stream: list[Sample], args, seed: int) -> dict[str, Any]:
    method = METHODS[name]
    torch.manual_seed(seed)
    engine = build_engine(settings_for(method, args, seed))
    curve: list[tuple[int, float]] = []

    def on_step(_, report) -> None:
        if report is not None and report.accuracy:
            curve.append((report.samples, statistics.mean(report.accuracy.values())))

    no_matrix = method.get("frozen") or method.get("iid")  # no windows trained in order
    if method.get("frozen"):  # probes only, scored once at the end
        for sample in stream:
            if engine.evaluator.is_probe(sample):
                engine.evaluator.add_probe(sample)
        final = engine.evaluator.evaluate(sorted({s.prompt(engine.learner.cfg.prompt_template)
                                                  for s in stream}))  # fmt: skip
    elif method.get("iid"):
        probes = [s for s in stream if engine.evaluator.is_probe(s)]
        train = [s for s in stream if not engine.evaluator.is_probe(s)]
        random.Random(seed).shuffle(train)
        for sample in probes:
            engine.evaluator.add_probe(sample)
        batch = args.batch_size
        for i in range(0, len(train), batch):
            engine.learner.step([engine.to_pair(s) for s in train[i : i + batch]])
        final = engine.evaluator.evaluate(engine.learner.labels)
    else:
        final = run_stream(engine, stream, args.batch_size, on_step)
    a, d = final.alignment, final.diagnosis
    return {
        "method": name, "seed": seed, "curve": curve,
        "a_auc": math.nan if no_matrix else final.a_auc,
        "a_last": statistics.mean(final.accuracy.values()) if final.accuracy else math.nan,
        "average_forgetting": math.nan if no_matrix else final.average_forgetting,
        "bwt": math.nan if no_matrix else final.bwt,
        "modality_gap": a.get("modality_gap", math.nan),
        "deficit": d.deficit if d is not None else math.nan,
        "accuracy": final.accuracy,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--model", default="streamer-tiny")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps-per-batch", type=int, default=3)
    parser.add_argument("--replay-per-step", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument(
        "--setting",
        choices=["scratch", "from-base", "held-out"],
        default="scratch",
        help="scratch: Fashion-MNIST from random weights; from-base: strategies on digits "
        "from a pretrained base; held-out: on the base's held-out classes, then digits "
        "(from_base.py, streams.py)",
    )
    parser.add_argument(
        "--bases",
        type=Path,
        default=None,
        help="from-base: keep the pretrained bases here (reused when there)",
    )
    parser.add_argument(
        "--no-step-times",
        dest="step_times",
        action="store_false",
        help="from-base: skip the interleaved step-time measurement",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="from-base, held-out: the results' file name (md, json, png; default "
        "quality-<setting>)",
    )
    parser.add_argument(
        "--also",
        type=Path,
        default=None,
        help="from-base, held-out: an earlier run's JSON, reported beside this one's",
    )
    parser.add_argument(
        "--chosen", default=None, help="from-base, held-out: the method ringed as the default"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--jobs", type=int, default=1, help="from-base, held-out: runs at once, in processes"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.setting in ("from-base", "held-out"):
        args.name = args.name or f"quality-{args.setting}"
        import from_base
        from quality_report import write_from_base

        from_base.main(args, lambda res, steps, secs: write_from_base(res, steps, args, secs))
        return
    args.methods = args.methods or list(METHODS)
    runs: dict[str, list[dict[str, Any]]] = {}
    start = time.monotonic()
    for variant, blurry in VARIANTS.items():
        runs[variant] = []
        for seed in args.seeds:
            cfg = StreamConfig(dataset="fashion-mnist", tasks=5, per_class=args.per_class,
                               blurry=blurry, seed=seed)  # fmt: skip
            stream = list(datasets.stream(cfg))
            for name in args.methods:
                result = run(name, stream, args, seed)
                runs[variant].append(result)
                print(f"{variant:18s} seed {seed} {name:18s} A_last {result['a_last']:.3f} "
                      f"forgetting {result['average_forgetting']:.3f} "
                      f"({time.monotonic() - start:.0f} s)", flush=True)  # fmt: skip
    write(runs, args, time.monotonic() - start)


FIELDS = ("a_auc", "a_last", "average_forgetting", "bwt", "modality_gap", "deficit")


def summary(results: list[dict[str, Any]], method: str) -> dict[str, tuple[float, float]]:
    rows = [r for r in results if r["method"] == method]
    out = {}
    for field in FIELDS:
        values = [r[field] for r in rows if not math.isnan(r[field])]
        mean = statistics.mean(values) if values else math.nan
        std = statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan
        out[field] = (mean, std)
    return out


def write(runs: dict[str, list[dict[str, Any]]], args, seconds: float) -> None:
    command = " ".join(["benchmarks/quality.py", *sys.argv[1:]])
    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "streamer": __version__, "threads": args.threads,
               "device": args.device, "seconds": round(seconds)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"quality-{args.model}.json").write_text(json.dumps(
        {"command": command, "machine": machine, "settings": vars(args) | {"out": str(args.out)},
         "runs": runs}, indent=1, default=str) + "\n")  # fmt: skip
    lines = [f"# Learning quality ({args.model}, Fashion-MNIST 5 tasks x 2 classes)", "",
             f"`{command}`  ",
             f"{machine['platform']}, torch {machine['torch']}, streamer {__version__}, "
             f"{args.threads} threads, {seconds / 60:.1f} min; seeds {args.seeds}, "
             f"{args.per_class} samples per class, lr {args.lr}, batch {args.batch_size}, "
             f"{args.steps_per_batch} update(s) per batch, {args.replay_per_step} replayed.", "",
             "Mean ± std over seeds. Accuracy among the label prompts seen so far, on held-out "
             "probes of each task; forgetting and BWT are undefined for frozen and joint.",
             ""]  # fmt: skip
    for variant, results in runs.items():
        lines += [f"## {variant}", "",
                  "| method | A_auc | A_last | avg forgetting | BWT | modality gap | "
                  "alignment deficit |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for method in dict.fromkeys(r["method"] for r in results):
            s = summary(results, method)
            cells = [("–" if math.isnan(m) else f"{m:.3f} ± {sd:.3f}") for m, sd in s.values()]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    (args.out / f"quality-{args.model}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    plot(runs, args.out / f"quality-{args.model}.png")


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, (variant, results) in zip(axes[0], runs.items(), strict=True):
        for method in dict.fromkeys(r["method"] for r in results):
            curves = [r["curve"] for r in results if r["method"] == method and r["curve"]]
            if not curves:
                final = [r["a_last"] for r in results if r["method"] == method]
                ax.axhline(statistics.mean(final), linestyle="--", color=COLOURS.get(method),
                           label=f"{method} (final)")  # fmt: skip
                continue
            n = min(len(c) for c in curves)
            xs = [curves[0][i][0] for i in range(n)]
            ys = [statistics.mean(c[i][1] for c in curves) for i in range(n)]
            ax.plot(xs, ys, label=method, color=COLOURS.get(method))
        ax.set_title(variant)
        ax.set_xlabel("trained samples")
        ax.set_ylabel("mean probe accuracy, windows so far")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
