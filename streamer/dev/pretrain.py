"""`streamer pretrain`: a base model to start from, since no pretrained CLIP is reachable here.

Trains the whole model of the config's `model.arch` contrastively (SIT, every parameter)
on the config's dataset stream, offline, and writes into the output directory:

- `base.safetensors`: a plain open_clip state dict, for `model.pretrained: PATH` (or
  `open_clip.create_model(arch, pretrained=PATH)`);
- `base.json`: what made it (arch, dataset, samples, seed, lr, versions) and its sha256;
- `reference/` and `reference.jsonl`: held-out images of the base's own domain (the
  dataset's test split), a manifest for `evaluation.reference_manifest`, so a run reports
  how much of what the base knew it retains;
- `distill/` and `distill.jsonl`: other images of that split (none of the reference's), for
  `learner.regularizer.manifest`: data of the base's domain to distil on (ZSCL's), kept
  apart from the reference so that retention measures what was not trained on.

Deterministic for a given config, seed and torch build. A production user points
`model.pretrained` at an open_clip tag instead.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import torch

from streamer import __version__
from streamer.config import Settings
from streamer.dev import datasets
from streamer.service.pipeline import build_engine, run_stream

WEIGHTS, CARD, REFERENCE = "base.safetensors", "base.json", "reference.jsonl"
DISTILL = 500  # images of the base's domain in distill.jsonl


def base_settings(settings: Settings) -> Settings:
    """Every parameter learns from random weights; nothing is held out or replayed."""
    model = settings.model.model_copy(
        update={"pretrained": None, "peft": settings.model.peft.model_copy(update={"mode": "full"})}
    )
    evaluation = settings.evaluation.model_copy(
        update={"probe_fraction": 0.0, "eval_every": 10**9, "reference_manifest": None}
    )
    replay = settings.replay.model_copy(update={"capacity": 0})
    return settings.model_copy(update={"model": model, "evaluation": evaluation,
                                       "replay": replay})  # fmt: skip


def pretrain(settings: Settings, out: Path, epochs: int = 1, reference: int = 300) -> Path:
    """Train, then write the weights, their card and the reference probes under `out`."""
    settings = base_settings(settings)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.learner.seed)
    engine = build_engine(settings)
    started, samples = time.monotonic(), list(datasets.stream(settings.stream))
    for epoch in range(epochs):
        random.Random(settings.stream.seed + epoch).shuffle(samples)
        run_stream(engine, samples, settings.learner.batch_size)
    weights = out / WEIGHTS
    engine.model.save_merged(weights)
    write_reference(settings, out, reference)
    write_reference(settings, out, DISTILL, name="distill", skip=reference)
    card = {
        "arch": settings.model.arch, "dataset": settings.stream.dataset,
        "split": settings.stream.split, "samples": len(samples), "epochs": epochs,
        "seed": settings.learner.seed, "lr": settings.learner.lr,
        "batch_size": settings.learner.batch_size, "loss": settings.learner.loss,
        "reference_probes": reference, "sha256": sha256(weights),
        "seconds": round(time.monotonic() - started, 1), "streamer": __version__,
        "torch": torch.__version__,
    }  # fmt: skip
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return weights


def write_reference(
    settings: Settings, out: Path, count: int, name: str = "reference", skip: int = 0
) -> Path:
    """`count` images of the dataset's other split (past the first `skip` of its seeded
    order), as files under `name/` and the manifest `name.jsonl`."""
    split = "test" if settings.stream.split == "train" else "train"
    cfg = settings.stream.model_copy(update={"split": split, "per_class": None, "tasks": 1})
    items = datasets.load(cfg)
    random.Random(settings.stream.seed).shuffle(items)
    folder = out / name
    folder.mkdir(exist_ok=True)
    lines = []
    for item in items[skip : skip + count]:
        file = f"{item.key}.png"
        (folder / file).write_bytes(item.encode("PNG"))
        lines.append(json.dumps({"image": f"{name}/{file}", "label": item.label}))
    manifest = out / f"{name}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
