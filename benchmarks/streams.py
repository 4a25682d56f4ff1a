"""The data of the from-a-base settings of benchmarks/quality.py: the base each seed starts
from, the stream it learns, the reference probes of what it knew, and unseen pairs of its
domain (ZSCL's distillation data and the rehearsal manifest).

- digits: the base knows all ten Fashion-MNIST classes (20,000 samples); the stream is
  scikit-learn's 1,797 digits as 5 class-incremental tasks of 2 (a new domain).
- held-out: the base knows 6 Fashion-MNIST classes (20,000 samples of t-shirt, trouser,
  pullover, dress, coat, sandal); the stream is the 4 held-out classes (shirt, sneaker, bag,
  ankle boot: 5,000 samples each, as 2 tasks of 2 classes, new classes of the base's domain,
  each close to one it knows), then the digits as 5 tasks of 2 (a domain shift): 21,797
  samples, 7 windows.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

from streamer.config import StreamConfig
from streamer.dev import datasets, scenarios
from streamer.dev.datasets import FASHION_CLASSES
from streamer.records import Sample

DISTILL = 500  # unseen pairs of the base's domain, past its pretraining samples


@dataclass(frozen=True)
class Setting:
    name: str
    base_classes: tuple[str, ...]  # what the base is pretrained on
    new_per_class: int  # held-out Fashion-MNIST samples per class in the stream (0: none)
    eval_every: int

    @property
    def held_out(self) -> tuple[str, ...]:
        return tuple(c for c in FASHION_CLASSES if c not in self.base_classes)

    def base_domain(self, seed: int) -> list[datasets.Item]:
        return scenarios.fashion(seed, self.base_classes)

    def pretrain(self, out: Path, seed: int) -> Path:
        return scenarios.pretrain(out, seed=seed, classes=self.base_classes)

    def reference(self, seed: int) -> list[Sample]:
        return scenarios.reference(seed, self.base_classes)

    def stream(self, seed: int) -> list[Sample]:
        out = self._held_out_tasks(seed) if self.held_out else []
        cfg = StreamConfig(dataset="digits", tasks=5, seed=seed)
        digits = list(datasets.stream(cfg))
        if out:  # the digits' windows after the new classes', their event times after theirs
            digits = [dataclasses.replace(s, task=f"digits-{s.task}", ts=s.ts + len(out) * 0.01)
                      for s in digits]  # fmt: skip
        return out + digits

    def _held_out_tasks(self, seed: int) -> list[Sample]:
        classes = list(self.held_out)
        random.Random(seed).shuffle(classes)
        items = scenarios.fashion(seed + 1000, classes)  # an order apart from the base's
        out: list[Sample] = []
        for t in range(0, len(classes), 2):
            task = [i for i in items if i.label in classes[t : t + 2]]
            chosen = [i for c in classes[t : t + 2]
                      for i in [i for i in task if i.label == c][: self.new_per_class]]  # fmt: skip
            random.Random(f"{seed}-{t}").shuffle(chosen)
            out += [_sample(i, f"fashion-{t // 2}", 1.7e9 + (len(out) + n) * 0.01)
                    for n, i in enumerate(chosen)]  # fmt: skip
        return out

    def distill_manifest(self, out: Path, seed: int, count: int = DISTILL) -> Path:
        """Unseen pairs of the base's domain (past its pretraining samples, before the
        reference probes) as a JSONL manifest of image files: ZSCL's distillation data and
        the rehearsal manifest."""
        items = self.base_domain(seed)[scenarios.PRETRAIN_SAMPLES :][:count]
        folder = out / f"distill-{self.name}-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for item in items:
            (folder / f"{item.key}.png").write_bytes(item.encode("PNG"))
            lines.append(json.dumps({"image": f"{item.key}.png", "label": item.label}))
        manifest = folder / "distill.jsonl"
        manifest.write_text("\n".join(lines) + "\n")
        return manifest


def _sample(item: datasets.Item, task: str, ts: float) -> Sample:
    return Sample(id=f"{task}-{item.key}", image=item.encode("PNG"),
                  text=datasets.CAPTION.format(label=item.label), label=item.label, task=task,
                  ts=ts)  # fmt: skip


SETTINGS = {
    "digits": Setting("digits", FASHION_CLASSES, 0, eval_every=160),
    "held-out": Setting("held-out", FASHION_CLASSES[:6], 5000, eval_every=800),
}
