"""Which parameters learn: LoRA adapters (lora.py), the last blocks, or all.

open_clip's attention keeps a fused `in_proj_weight` (nn.MultiheadAttention or its own
Attention), which generic PEFT wrappers do not handle. A parametrization adds the low-rank
delta to the weight itself, so attention code runs unchanged; nn.MultiheadAttention also gets
the training side path of lora.py. B starts at zero: step 0 is exactly the base model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from streamer.config import PeftConfig
from streamer.learning.lora import LoRADelta, LoRAMultiheadAttention


def towers(net: nn.Module, which: str) -> list[nn.Module]:
    """The image and/or text tower modules of an open_clip model."""
    text = net.text if hasattr(net, "text") else _TextParts(net)
    return {"both": [net.visual, text], "image": [net.visual], "text": [text]}[which]


class _TextParts(nn.Module):
    """A view of the text tower of open_clip's CLIP, whose parts sit on the model itself."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.transformer = net.transformer
        self.token_embedding = net.token_embedding
        self.ln_final = net.ln_final
        self.owner = [net]  # a list, so the whole model is not registered as a child


def _blocks(tower: nn.Module) -> list[nn.Module]:
    return list(tower.transformer.resblocks)


def _head(tower: nn.Module) -> list[nn.Module | nn.Parameter]:
    """What follows the blocks: final norm and projection into the joint space."""
    if isinstance(tower, _TextParts):
        return [tower.ln_final, tower.owner[0].text_projection]
    parts = (getattr(tower, "ln_post", None), getattr(tower, "proj", None))
    return [p for p in parts if p is not None]


def apply_peft(net: nn.Module, cfg: PeftConfig, seed: int) -> None:
    """Freeze the model, then make the chosen parameters trainable (adding LoRA if asked)."""
    net.requires_grad_(False)
    chosen = towers(net, cfg.towers)
    if cfg.mode == "lora":
        generator = torch.Generator().manual_seed(seed)
        for tower in chosen:
            for block in _blocks(tower):
                _add_lora(block.attn, cfg, generator)
        return
    for tower in chosen:
        parts = [tower] if cfg.mode == "full" else _blocks(tower)[-cfg.last_blocks :]
        if cfg.mode == "full" and isinstance(tower, _TextParts):
            parts.append(tower.owner[0].positional_embedding)
        for part in [*parts, *_head(tower)]:
            part.requires_grad_(True)
    if cfg.mode == "full":
        net.logit_scale.requires_grad_(True)


def _add_lora(attn: nn.Module, cfg: PeftConfig, generator: torch.Generator) -> None:
    plain = getattr(attn, "_qkv_same_embed_dim", False) and attn.bias_k is None
    if type(attn) is nn.MultiheadAttention and plain and not attn.add_zero_attn:
        attn.__class__ = LoRAMultiheadAttention  # same parameters and names, one more path
    targets = [(attn, "in_proj_weight"), (attn.out_proj, "weight")]
    for module, name in targets:
        out_features, in_features = getattr(module, name).shape
        delta = LoRADelta(out_features, in_features, cfg, generator)
        parametrize.register_parametrization(module, name, delta, unsafe=True)


def lora_modules(net: nn.Module) -> Iterator[LoRADelta]:
    return (m for m in net.modules() if isinstance(m, LoRADelta))


def block_adapters(net: nn.Module) -> dict[tuple[str, int], list[LoRADelta]]:
    """The LoRA deltas of each attention block, keyed (tower, block index)."""
    out = {}
    for name, tower in zip(("image", "text"), towers(net, "both"), strict=True):
        for i, block in enumerate(_blocks(tower)):
            deltas = [m for m in block.modules() if isinstance(m, LoRADelta)]
            if deltas:
                out[(name, i)] = deltas
    return out


def block_shift(net: nn.Module, base: nn.Module) -> dict[tuple[str, int], float]:
    """‖W − W_base‖ over each block's parameters (modes without adapters)."""
    out = {}
    pairs = zip(("image", "text"), towers(net, "both"), towers(base, "both"), strict=True)
    for name, tower, tower0 in pairs:
        for i, (block, block0) in enumerate(zip(_blocks(tower), _blocks(tower0), strict=True)):
            squares = [
                (p.detach() - p0.detach().to(p.device)).float().pow(2).sum()
                for p, p0 in zip(block.parameters(), block0.parameters(), strict=True)
            ]
            out[(name, i)] = float(torch.stack(squares).sum().sqrt())
    return out


def delta_norm(deltas: list[LoRADelta]) -> float:
    """‖scale · B A‖ over a block's adapters (Frobenius, all of them together)."""
    with torch.no_grad():
        squares = [(d.scale * d.lora_B @ d.lora_A).float().pow(2).sum() for d in deltas]
        return float(torch.stack(squares).sum().sqrt())


@contextmanager
def adapters_disabled(net: nn.Module, modules: list[LoRADelta] | None = None) -> Iterator[None]:
    """Run without LoRA deltas (all of them: the base model; or just `modules`)."""
    modules = list(lora_modules(net)) if modules is None else modules
    for m in modules:
        m.enabled = False
    try:
        yield
    finally:
        for m in modules:
            m.enabled = True


def merged_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of plain open_clip (fp32): each LoRA delta folded into its weight.

    Built by reading the parametrized weights, never by removing parametrizations (that
    rewrites module classes shared with copies of the model). Weights kept in bf16 for speed
    (model.store_frozen) come back in fp32, the delta added in fp32.
    """
    was_training = net.training
    net.eval()  # no dropout on the factors
    state = {k: _fp32(v) for k, v in net.state_dict().items() if ".parametrizations." not in k}
    with torch.no_grad():
        for prefix, module in net.named_modules():
            if parametrize.is_parametrized(module):
                for name, chain in module.parametrizations.items():
                    weight = _fp32(chain.original)
                    for step in chain:
                        weight = step(weight)
                    state[f"{prefix}.{name}"] = weight.detach().clone()
    net.train(was_training)
    return state


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    low = tensor.dtype in (torch.bfloat16, torch.float16)
    return tensor.float() if low else tensor
