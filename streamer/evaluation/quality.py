"""The figures an operator decides on, recorded in every checkpoint's `meta.json`.

They are read off state the evaluator and learner already keep (the accuracy matrix, the
recent alignment deficits, the non-finite step counter); nothing is measured again here, so
saving a checkpoint costs no evaluation. NaN (nothing measured yet) is written as null.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypedDict

from streamer.config import Settings, config_hash
from streamer.config.checks import anchored
from streamer.evaluation.evaluate import REFERENCE, Evaluator

LATEST_WINDOWS = 5  # windows most recently trained on, newest last


class Reference(TypedDict):
    accuracy: float | None  # on the pinned reference probes, now
    base: float | None  # ... at step 0: what the base model knew
    retention: float | None  # accuracy - base


class Misalignment(TypedDict):
    misaligned: bool  # the deficit held over the threshold for the whole window
    deficit: float | None  # the latest evaluation's
    recent: list[float]  # the deficits the alarm is judged on, newest last
    threshold: float
    blame: str | None  # the latest diagnosis's tower (image, text, both, none); None: not yet
    lost: float | None  # the part of the deficit a swap back to the base would recover
    worst_classes: list[str]  # the classes that lost most alignment, worst first


class Quality(TypedDict):
    step: int
    samples: int  # trained samples the evaluator has seen
    reference: Reference | None  # None without a reference probe set
    a_last: float | None
    windows: dict[str, float]  # latest accuracy per window measured on enough probes
    latest_windows: list[str]  # the windows trained on most recently, newest last
    misalignment: Misalignment
    skipped_nonfinite: int  # optimizer steps skipped for a non-finite loss, since the start


def checkpoint_meta(settings: Settings, evaluator: Evaluator, step: int, skipped: int) -> dict:
    """What a checkpoint's meta.json says of the model: step, quality, the config (secrets
    masked; paths absolute, as `streamer explain` or `export` may read it from anywhere)."""
    return {"step": step, "quality": figures(evaluator, step, skipped),
            "config_hash": config_hash(settings),
            "config": anchored(settings, Path.cwd()).model_dump(mode="json")}  # fmt: skip


def figures(evaluator: Evaluator, step: int, skipped_nonfinite: int) -> Quality:
    """The quality of the model as it stands, from the evaluator's last evaluation."""
    m, cfg = evaluator.matrix, evaluator.cfg
    deficits = list(evaluator._deficits)  # the evaluator's own record
    return {
        "step": step,
        "samples": evaluator.samples,
        "reference": _reference(evaluator) if REFERENCE in m.pinned else None,
        "a_last": _finite(m.a_last()),
        "windows": {w: c.accuracy for w, c in sorted(m.latest.items()) if m.measured(c)},
        "latest_windows": list(m.started[-LATEST_WINDOWS:]),
        "misalignment": {
            "misaligned": evaluator.misaligned(),
            "deficit": _finite(deficits[-1]) if deficits else None,
            "recent": [float(d) for d in deficits],
            "threshold": cfg.misalignment_threshold,
            **_diagnosis(evaluator),
        },
        "skipped_nonfinite": int(skipped_nonfinite),
    }


def _diagnosis(evaluator: Evaluator) -> dict[str, Any]:
    d = evaluator.diagnosis
    if d is None:  # none since the (re)start: the deficits above still say how it stands
        return {"blame": None, "lost": None, "worst_classes": []}
    return {"blame": d.blame, "lost": _finite(d.lost), "worst_classes": [c.text for c in d.top(3)]}


def _reference(evaluator: Evaluator) -> Reference:
    m = evaluator.matrix
    now, base = m.latest.get(REFERENCE), m.base.get(REFERENCE)
    now_acc = now.accuracy if m.measured(now) else None
    base_acc = base.accuracy if m.measured(base) else None
    retention = now_acc - base_acc if now_acc is not None and base_acc is not None else None
    return {"accuracy": now_acc, "base": base_acc, "retention": retention}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def of(meta: dict[str, Any]) -> Quality | None:
    """The quality a checkpoint's meta records (None: written before it was recorded)."""
    quality = meta.get("quality")
    return quality if isinstance(quality, dict) else None
