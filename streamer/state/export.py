"""A checkpoint as something a serving stack loads: adapters alone, or a merged open_clip file.

- `adapters`: `adapters.safetensors`, the trainable parameters (LoRA factors, or the unfrozen
  weights), to load into the same architecture and base with streamer's PEFT;
- `merged`: `open_clip_model.safetensors`, a plain open_clip state dict with the adapters
  folded in: `open_clip.create_model(arch, pretrained=PATH)` loads it, nothing else needed
  (`open_clip_config.json` beside it registers an architecture open_clip does not ship).

`blend` is WiSE-FT toward the base: base + blend x (trained - base); 0 is the base, 1 (or
None) the model as trained. `manifest.json` says what it is: arch, base, step, offsets,
quality, config hash, and the sha256 of every other file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
from safetensors.torch import save_file

from streamer.config import ModelConfig
from streamer.learning.model import ClipModel, register_model_configs
from streamer.learning.peft import merged_state_dict
from streamer.state.checkpoint import Checkpoint

Format = Literal["adapters", "merged"]
MANIFEST = "manifest.json"
MERGED = "open_clip_model.safetensors"
ADAPTERS = "adapters.safetensors"


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
    """Write the export into `out` (created; files already there are replaced); its manifest."""
    model = model or model_for(checkpoint)
    model.load_trainable_state(checkpoint.weights)
    out.mkdir(parents=True, exist_ok=True)
    alpha = 1.0 if blend is None else float(blend)
    if fmt == "merged":
        save_file(_contiguous(_merged(model, alpha)), str(out / MERGED))
        config = open_clip.get_model_config(model.cfg.arch)
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    else:
        meta = {"arch": model.cfg.arch, "peft": model.cfg.peft.model_dump_json()}
        save_file(_contiguous(_adapters(model, alpha)), str(out / ADAPTERS), metadata=meta)
    manifest = _manifest(checkpoint, model.cfg, fmt, alpha, out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


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


def _manifest(ckpt: Checkpoint, cfg: ModelConfig, fmt: Format, alpha: float, out: Path) -> dict:
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST)
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
        "files": {name: sha256(out / name) for name in files},
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_merged(arch: str, path: Path, config_dirs: tuple[Path, ...] = ()) -> torch.nn.Module:
    """What a serving stack does (open_clip alone), for tests and tools."""
    register_model_configs(config_dirs)
    return open_clip.create_model(arch, pretrained=str(path))
