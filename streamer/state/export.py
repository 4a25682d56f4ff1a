"""A checkpoint as something a serving stack loads: adapters alone, or a merged open_clip file.

- `adapters`: `adapters.safetensors`, the trainable parameters (LoRA factors, or the unfrozen
  weights), to load into the same architecture and base with streamer's PEFT;
- `merged`: `open_clip_model.safetensors`, a plain open_clip state dict with the adapters
  folded in, and `open_clip_config.json` in the Hugging Face hub layout open_clip reads
  (`model_cfg`, `preprocess_cfg`): `open_clip.create_model_and_transforms("local-dir:DIR")`
  loads the folder with open_clip alone, whatever the architecture (open_clip >= 3).

`blend` is WiSE-FT toward the base: base + blend x (trained - base); 0 is the base, 1 (or
None) the model as trained. `manifest.json` says what it is: arch, base, step, offsets,
quality, config hash, and the sha256 of every other file (`streamer.state.verify` checks
them). Every file is written 0644, so a server running as another user can read it; the
output folder must be empty or absent, so a manifest never lists an older export's file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
from safetensors.torch import save_file

from streamer.config import ModelConfig
from streamer.learning.model import ClipModel
from streamer.learning.peft import merged_state_dict
from streamer.state.checkpoint import Checkpoint
from streamer.state.verify import MANIFEST, sha256

Format = Literal["adapters", "merged"]
MERGED = "open_clip_model.safetensors"
ADAPTERS = "adapters.safetensors"
CONFIG = "open_clip_config.json"
MODE = 0o644
__all__ = ["ADAPTERS", "CONFIG", "MANIFEST", "MERGED", "ExportError", "export", "load_merged",
           "model_for", "sha256"]  # fmt: skip


class ExportError(RuntimeError):
    """The export cannot be written where asked; nothing was written."""


def model_for(checkpoint: Checkpoint) -> ClipModel:
    """A CPU model built as the checkpoint's config built the daemon's (same base, seed)."""
    config = checkpoint.meta["config"]
    cfg = ModelConfig.model_validate(config["model"])
    return ClipModel(cfg, torch.device("cpu"), seed=int(config["learner"]["seed"]))


def export(
    checkpoint: Checkpoint,
    out: Path,
    fmt: Format = "merged",
    blend: float | None = None,
    model: ClipModel | None = None,
) -> dict[str, Any]:
    """Write the export into `out` (created; it must be empty or absent); its manifest."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} is not an empty folder; export into a new one")
    model = model or model_for(checkpoint)
    model.load_trainable_state(checkpoint.weights)
    out.mkdir(parents=True, exist_ok=True)
    alpha = 1.0 if blend is None else float(blend)
    if fmt == "merged":
        save_file(_contiguous(_merged(model, alpha)), str(out / MERGED))
        (out / CONFIG).write_text(json.dumps(_hub_config(model), indent=2))
        written = [MERGED, CONFIG]
    else:
        meta = {"arch": model.cfg.arch, "peft": model.cfg.peft.model_dump_json()}
        save_file(_contiguous(_adapters(model, alpha)), str(out / ADAPTERS), metadata=meta)
        written = [ADAPTERS]
    manifest = _manifest(checkpoint, model.cfg, fmt, alpha, out, written)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    for name in [*written, MANIFEST]:
        (out / name).chmod(MODE)  # safetensors writes 0600
    return manifest


def _hub_config(model: ClipModel) -> dict[str, Any]:
    """open_clip's hub layout: what `local-dir:` and `hf-hub:` read (they need `model_cfg`)."""
    return {
        "model_cfg": open_clip.get_model_config(model.cfg.arch),
        "preprocess_cfg": open_clip.get_model_preprocess_cfg(model.net),
    }


def _merged(model: ClipModel, alpha: float) -> dict[str, torch.Tensor]:
    trained = merged_state_dict(model.net)
    if alpha == 1.0:
        return trained
    with model.base() as base_net:  # LoRA: the same network, adapters off
        base = merged_state_dict(base_net)
    return {k: _lerp(base[k], v, alpha) for k, v in trained.items()}


def _adapters(model: ClipModel, alpha: float) -> dict[str, torch.Tensor]:
    """LoRA: delta = scale B A is linear in B, so blending scales B; other modes blend
    each trainable weight with its base value."""
    state = model.trainable_state()
    if alpha == 1.0:
        return state
    if model.frozen_base is None:
        return {k: v * alpha if k.endswith("lora_B") else v for k, v in state.items()}
    base = dict(model.frozen_base.named_parameters())
    return {k: _lerp(base[k].detach().cpu(), v, alpha) for k, v in state.items()}


def _lerp(base: torch.Tensor, trained: torch.Tensor, alpha: float) -> torch.Tensor:
    if not trained.is_floating_point():
        return trained
    return base + alpha * (trained - base)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _manifest(
    ckpt: Checkpoint, cfg: ModelConfig, fmt: Format, alpha: float, out: Path, files: list[str]
) -> dict:
    return {
        "format": fmt,
        "arch": cfg.arch,
        "base": cfg.pretrained,
        "peft": cfg.peft.model_dump(mode="json"),
        "blend": alpha,
        "checkpoint": ckpt.id,
        "step": ckpt.meta.get("step"),
        "offsets": ckpt.meta.get("offsets", {}),
        "quality": ckpt.meta.get("quality"),
        "config_hash": ckpt.meta.get("config_hash"),
        "files": {name: sha256(out / name) for name in sorted(files)},
    }


def load_merged(folder: Path) -> torch.nn.Module:
    """What a serving stack does (open_clip alone, no registered configs), for tests and tools."""
    return open_clip.create_model(f"local-dir:{Path(folder).resolve()}")
