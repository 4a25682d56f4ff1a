"""Building, loading and exporting the open_clip model: the only module that imports open_clip."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from streamer.config import ModelConfig
from streamer.learning.peft import (
    adapters_disabled,
    apply_peft,
    merged_state_dict,
    towers,
)
from streamer.learning.precision import keep_frozen_in, upload
from streamer.learning.tokens import Tokens

BUILTIN_CONFIGS = Path(__file__).parent / "model_configs"  # in the wheel
REPO_CONFIGS = Path(__file__).parents[2] / "configs" / "models"  # in a source checkout


class ModelLoadError(RuntimeError):
    """The model or its weights cannot be built or loaded; the message says which and why."""


def register_model_configs(extra: Sequence[Path] = ()) -> None:
    for directory in (BUILTIN_CONFIGS, REPO_CONFIGS, *extra):
        if directory.is_dir() and Path(directory) not in open_clip.factory._MODEL_CONFIG_PATHS:
            open_clip.add_model_config(directory)


def _check_weights_file(path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(
            f"model.pretrained: weights file {path} does not exist (fill the model cache "
            "first: docs/operations.md, 'Air-gapped start')"
        )
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model.pretrained: weights file {path} is not readable")


def _create(cfg: ModelConfig) -> tuple[nn.Module, object]:
    """open_clip model and its evaluation transform, from a tag, a local file, or random init."""
    register_model_configs(cfg.config_dirs)
    if cfg.arch not in open_clip.list_models():
        raise ModelLoadError(f"model.arch: unknown architecture {cfg.arch!r}")
    pretrained = cfg.pretrained or None
    if cfg.weights_file is not None:
        _check_weights_file(cfg.weights_file)
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
        "is set; download it once or give a local weights file path (docs/operations.md, "
        "'Air-gapped start')"
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
        self._geometry, mean, std = _split_preprocess(preprocess)
        self.image_size = _image_size(preprocess)
        self.tokenizer = Tokens(open_clip.get_tokenizer(cfg.arch))  # shared with the decoder
        self.frozen_base = None if cfg.peft.mode == "lora" else copy.deepcopy(net).eval()
        apply_peft(net, cfg.peft, seed)
        self.net = net.to(device).eval()
        if self.frozen_base is not None:
            self.frozen_base.requires_grad_(False).to(device)
        self.device = device
        self._mean = None if mean is None else mean.to(device)
        self._std = None if std is None else std.to(device)
        self.compute_dtype: torch.dtype | None = None  # autocast to it (store_frozen)

    # -- encoding ----------------------------------------------------------------------------
    def pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> uint8 tensor [3, H, W] at model resolution (4x smaller than floats);
        encode_images normalises it on the device. A preprocessing of another shape than
        open_clip's resize, crop, to-tensor, normalise gives its own float tensor."""
        if self._geometry is None:
            return self.preprocess(image)
        image = self._geometry(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        # HWC -> CHW in numpy: a torch copy this size would use the intra-op thread pool from
        # a decode worker, and its threads contend with the other workers and training
        return torch.from_numpy(
            np.ascontiguousarray(np.asarray(image, np.uint8).transpose(2, 0, 1))
        )

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [B, 3, H, W] on the device -> the model's input, as its transform would
        make it (the same operations in the same order: bit-identical on a CPU)."""
        if pixels.dtype != torch.uint8 or self._mean is None:
            return pixels  # already the model's input
        return pixels.float().div(255).sub_(self._mean).div_(self._std)

    def encode_images(self, pixels: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        """pixels [B, 3, H, W], uint8 or normalised -> unit embeddings [B, D]."""
        x = self.normalise(pixels.to(self.device, non_blocking=True))
        with self.autocast():
            return F.normalize((net or self.net).encode_image(x).float(), dim=-1)

    def encode_texts(self, texts: Sequence[str], net: nn.Module | None = None) -> torch.Tensor:
        """texts [T] -> unit embeddings [T, D]."""
        tokens = upload(self.tokenizer(list(texts)), self.device)
        with self.autocast():
            return F.normalize((net or self.net).encode_text(tokens).float(), dim=-1)

    def autocast(self):
        """Mixed precision in the dtype the frozen weights are kept in (none: as stored)."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def store_frozen(self, dtype: torch.dtype) -> None:
        """Keep the frozen matrices in `dtype` and compute under autocast to it (precision.py):
        no cast of the frozen weights, nor of the layer norms' activations, per forward."""
        self.compute_dtype = dtype
        keep_frozen_in(self.net, dtype)

    def stack_pixels(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pixels [3, H, W] each -> [B, 3, H, W], stacked where they are; rows held on the host
        go to the device in one non-blocking copy from pinned memory."""
        if len({p.dtype for p in rows}) > 1:  # uint8 beside floats: all become model input
            rows = [self.normalise(p.to(self.device)[None])[0] for p in rows]
        on_host = [i for i, p in enumerate(rows) if p.device != self.device]
        if not on_host:
            return torch.stack(list(rows))
        host = torch.stack([rows[i] for i in on_host])
        if self.device.type == "cuda":
            host = host.pin_memory()
        if len(on_host) == len(rows):
            return host  # encode_images copies it, non-blocking
        held = sorted(set(range(len(rows))) - set(on_host))
        out = torch.empty((len(rows), *host.shape[1:]), dtype=host.dtype, device=self.device)
        out[on_host] = host.to(self.device, non_blocking=True)
        out[held] = torch.stack([rows[i] for i in held]).to(host.dtype)
        return out

    def compile(self, mode: str | None = None) -> None:
        """torch.compile each transformer block in place (`mode` as torch.compile's). Blocks
        share their code, so one compilation serves every block of a tower and shape; state
        dict keys and encode_image / encode_text are unchanged."""
        # One code object, many variants: two towers' shapes, training and serving, the
        # first block's input without a gradient, text counts. Past dynamo's default limit of
        # 8 a block would silently run eagerly again.
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), 64))
        for tower in towers(self.net, "both"):
            for block in tower.transformer.resblocks:
                block.compile(mode=mode)

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


def _split_preprocess(preprocess) -> tuple:
    """(resize-and-crop, mean [3, 1, 1], std [3, 1, 1]) of open_clip's evaluation transform,
    or (None, None, None) when it is not the usual geometry, to-tensor, normalise chain."""
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or not type(steps[-2]).__name__.endswith("ToTensor"):
        return None, None, None
    norm = steps[-1]
    if not hasattr(norm, "mean") or not hasattr(norm, "std"):
        return None, None, None
    geometry = type(preprocess)(steps[:-2])
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)
    return geometry, mean, std


def _image_size(preprocess) -> int | None:
    """The side the transform resizes to (for decoding a JPEG at reduced scale), if known."""
    for step in getattr(preprocess, "transforms", []):
        size = getattr(step, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(min(size))
    return None
