"""Building, loading and exporting the open_clip model: the only module that imports open_clip."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from streamer.config import ModelConfig
from streamer.peft import adapters_disabled, apply_peft, merged_state_dict

BUILTIN_CONFIGS = Path(__file__).parent / "model_configs"  # in the wheel
REPO_CONFIGS = Path(__file__).parent.parent / "configs" / "models"  # in a source checkout
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class ModelLoadError(RuntimeError):
    """The model or its weights cannot be built or loaded; the message says which and why."""


def register_model_configs(extra: Sequence[Path] = ()) -> None:
    for directory in (BUILTIN_CONFIGS, REPO_CONFIGS, *extra):
        if directory.is_dir() and Path(directory) not in open_clip.factory._MODEL_CONFIG_PATHS:
            open_clip.add_model_config(directory)


def is_weights_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES) or Path(pretrained).exists()


def _check_weights_file(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"model.pretrained: weights file {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model.pretrained: weights file {path} is not readable")


def _create(cfg: ModelConfig) -> tuple[nn.Module, object]:
    """open_clip model and its evaluation transform, from a tag, a local file, or random init."""
    register_model_configs(cfg.config_dirs)
    if cfg.arch not in open_clip.list_models():
        raise ModelLoadError(f"model.arch: unknown architecture {cfg.arch!r}")
    pretrained = cfg.pretrained or None
    if pretrained and is_weights_path(pretrained):
        _check_weights_file(Path(pretrained))
    elif pretrained:
        pretrained = _resolve_tag(cfg.arch, pretrained, cfg.cache_dir)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            cfg.arch,
            pretrained=pretrained,
            cache_dir=str(cfg.cache_dir) if cfg.cache_dir else None,
        )
    except Exception as exc:  # any failure to read weights is the operator's to fix
        raise ModelLoadError(
            f"cannot build {cfg.arch} with model.pretrained={pretrained!r}: {exc}"
        ) from exc
    return net, preprocess


def _resolve_tag(arch: str, tag: str, cache_dir: Path | None) -> str:
    """A known tag; offline (HF_HUB_OFFLINE) it must already be in the hub cache."""
    if tag not in open_clip.list_pretrained_tags_by_model(arch):
        raise ModelLoadError(
            f"model.pretrained: {tag!r} is neither a file nor a known tag for {arch}"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return tag
    hub = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "")
    repo, filename = os.path.split(hub)
    for name in (
        (filename,) if filename else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    ):
        cached = try_to_load_from_cache(repo, name, cache_dir=cache_dir) if repo else None
        if isinstance(cached, str):
            return cached
    raise ModelLoadError(
        f"model.pretrained: tag {tag!r} for {arch} is not in the local cache and HF_HUB_OFFLINE "
        "is set; download it once or give a local weights file path"
    )


class ClipModel:
    """An open_clip model with its preprocessing, tokenizer, trainable parameters and base model.

    The base model (the weights as loaded) is what drift is measured against: with LoRA it is
    the same network with adapters off; otherwise a frozen copy taken before any update.
    """

    def __init__(self, cfg: ModelConfig, device: torch.device, seed: int = 0) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random-init models are reproducible
            net, preprocess = _create(cfg)
        self.cfg = cfg
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(cfg.arch)
        self.frozen_base = None if cfg.peft.mode == "lora" else copy.deepcopy(net).eval()
        apply_peft(net, cfg.peft, seed)
        self.net = net.to(device).eval()
        if self.frozen_base is not None:
            self.frozen_base.requires_grad_(False).to(device)
        self.device = device

    # -- encoding ----------------------------------------------------------------------------
    def pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> normalised tensor [3, H, W] for this model."""
        return self.preprocess(image)

    def encode_images(self, pixels: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        """pixels [B, 3, H, W] -> unit embeddings [B, D]."""
        out = (net or self.net).encode_image(pixels.to(self.device, non_blocking=True))
        return F.normalize(out.float(), dim=-1)

    def encode_texts(self, texts: Sequence[str], net: nn.Module | None = None) -> torch.Tensor:
        """texts [T] -> unit embeddings [T, D]."""
        tokens = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        return F.normalize((net or self.net).encode_text(tokens).float(), dim=-1)

    @functools.cached_property
    def embed_dim(self) -> int:
        """D of the joint embedding space (read off one encoding: it varies by architecture)."""
        with torch.no_grad():
            return int(self.encode_texts([""]).shape[1])

    @contextmanager
    def base(self) -> Iterator[nn.Module]:
        """The frozen base network, for drift references (no gradients)."""
        with torch.no_grad():
            if self.frozen_base is not None:
                yield self.frozen_base
            else:
                with adapters_disabled(self.net):
                    yield self.net

    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.exp().clamp(max=100.0)

    # -- trainable state ---------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.net.named_parameters() if p.requires_grad}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.trainable_parameters().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable_parameters()
        missing, unexpected = params.keys() - state.keys(), state.keys() - params.keys()
        if missing or unexpected:
            raise ModelLoadError(
                f"trainable state does not fit {self.cfg.arch}/{self.cfg.peft.mode}: "
                f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
            )
        with torch.no_grad():
            for name, param in params.items():
                if param.shape != state[name].shape:
                    raise ModelLoadError(f"trainable state: {name} has shape {state[name].shape}")
                param.copy_(state[name])

    def save_trainable(self, path: Path) -> None:
        """Only the parameters that learn (LoRA factors or unfrozen blocks), as safetensors."""
        meta = {"arch": self.cfg.arch, "peft": self.cfg.peft.model_dump_json()}
        save_file(self.trainable_state(), str(path), metadata=meta)

    def load_trainable(self, path: Path) -> None:
        _check_weights_file(Path(path))
        self.load_trainable_state(load_file(str(path)))

    def save_merged(self, path: Path) -> None:
        """A plain open_clip state dict (LoRA folded in): `create_model(arch, pretrained=path)`."""
        state = {k: v.cpu().contiguous() for k, v in merged_state_dict(self.net).items()}
        save_file(state, str(path))
