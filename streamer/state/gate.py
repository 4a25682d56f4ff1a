"""`publish.gate`: may a checkpoint be published? A verdict with every reason it may not.

The checks, each named by the reason it reports (a bounded vocabulary: metric labels):
- `retention`: reference accuracy below `min_retention_ratio` x the base's (the base's
  knowledge is being lost); `no_reference` when it is required but was not measured;
- `misaligned`: the evaluator's misalignment alarm is raised;
- `window_accuracy`: one of the latest windows' accuracy is below the floor;
- `nonfinite`: more non-finite (skipped) steps since the last published version than allowed;
- `no_quality`: the checkpoint records no quality (written before quality was recorded).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.config import GateConfig
from streamer.evaluation.quality import Quality

REASONS = ("retention", "no_reference", "misaligned", "window_accuracy", "nonfinite",
           "no_quality")  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    reasons: tuple[str, ...]  # empty: it passes
    details: tuple[str, ...] = ()  # one sentence per reason, for the log

    @property
    def passed(self) -> bool:
        return not self.reasons


def judge(quality: Quality | None, cfg: GateConfig, published: Quality | None) -> Verdict:
    """`quality` of the candidate; `published`: that of the last published version (None:
    nothing published yet, so every non-finite step since the start counts)."""
    if quality is None:
        return Verdict(("no_quality",), ("the checkpoint records no quality figures",))
    found = [
        _retention(quality, cfg),
        _misaligned(quality, cfg),
        _windows(quality, cfg),
        _nonfinite(quality, cfg, published),
    ]
    failed = [f for f in found if f is not None]
    return Verdict(tuple(r for r, _ in failed), tuple(d for _, d in failed))


def _retention(q: Quality, cfg: GateConfig) -> tuple[str, str] | None:
    ref = q["reference"]
    now, base = (ref["accuracy"], ref["base"]) if ref else (None, None)
    if now is None or base is None:
        return ("no_reference", "retention was not measured") if cfg.require_reference else None
    if now < cfg.min_retention_ratio * base:
        return "retention", f"reference accuracy {now:.3f} < {cfg.min_retention_ratio} x {base:.3f}"
    return None


def _misaligned(q: Quality, cfg: GateConfig) -> tuple[str, str] | None:
    m = q["misalignment"]
    if m["misaligned"] and not cfg.allow_misaligned:
        return "misaligned", f"misalignment alarm (deficit {m['deficit']})"
    return None


def _windows(q: Quality, cfg: GateConfig) -> tuple[str, str] | None:
    latest = q["latest_windows"][-cfg.latest_windows :]
    low = {w: q["windows"][w] for w in latest if q["windows"].get(w, 1.0) < cfg.min_window_accuracy}
    if low:
        shown = ", ".join(f"{w}={a:.3f}" for w, a in low.items())
        return "window_accuracy", f"latest windows below {cfg.min_window_accuracy}: {shown}"
    return None


def _nonfinite(q: Quality, cfg: GateConfig, published: Quality | None) -> tuple[str, str] | None:
    since = q["skipped_nonfinite"] - (published["skipped_nonfinite"] if published else 0)
    if since > cfg.max_nonfinite_steps:
        return "nonfinite", f"{since} non-finite steps since the last published version"
    return None
