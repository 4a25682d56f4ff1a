"""LoRA adapters: a low-rank delta on a frozen weight, computed as a side path when training.

Serving and evaluation read the adapted weight through a parametrization (W + s·B·A,
materialised once per forward: cheap without a backward, and exactly nn.MultiheadAttention's
own code path, so step 0 is bit-for-bit the base model). A training forward instead adds
s·(x·Aᵀ)·Bᵀ beside the frozen projection: nothing of the weight's size is built, cast or
kept for the backward, and the base weights may be stored in bf16 (no cast per forward).
B starts at zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from streamer.config import PeftConfig


class LoRADelta(nn.Module):
    """W -> W + (alpha / rank) * B @ A, with A [rank, in] and B [out, rank] (B = 0 at init)."""

    def __init__(
        self, out_features: int, in_features: int, cfg: PeftConfig, generator: torch.Generator
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) as nn.Linear
        a = torch.empty(cfg.rank, in_features).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(out_features, cfg.rank))
        self.scale = cfg.alpha / cfg.rank
        self.dropout = nn.Dropout(cfg.dropout)
        self.enabled = True
        self.override: torch.Tensor | None = None  # a teacher's delta [out, in], while viewed
        self.cast: tuple[torch.Tensor, torch.Tensor] | None = None  # (A, B) for one update

    def delta(self) -> torch.Tensor:
        """The adapter's current scale * B @ A [out, in] (no dropout), with its gradient."""
        return self.scale * self.lora_B @ self.lora_A

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The parametrization: the adapted weight (the inference path)."""
        if not self.enabled:
            return weight
        if self.override is not None:
            return weight + self.override.to(weight.dtype)
        delta = self.lora_B @ self.dropout(self.lora_A)  # [out, in]
        return weight + self.scale * delta.to(weight.dtype)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """x [..., in] -> x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ [..., out] (the training path)."""
        main = F.linear(x, weight, bias)
        if not self.enabled:
            return main
        if self.override is not None:
            return main + F.linear(x, self.override.to(main.dtype))
        a, b = self.cast or (self.lora_A, self.lora_B)
        hidden = F.linear(self.dropout(x), a)  # [..., rank]
        flat = torch.addmm(main.flatten(0, -2), hidden.flatten(0, -2), b.t(), alpha=self.scale)
        return flat.view_as(main)


class LoRAMultiheadAttention(nn.MultiheadAttention):
    """open_clip's self-attention (nn.MultiheadAttention, fused in_proj) with LoRA side paths.

    The class of an existing module is swapped to this one, so its parameters, their names
    and open_clip's state dict are unchanged. Only a training forward of self-attention takes
    the side path; anything else is nn.MultiheadAttention's own forward on adapted weights.
    """

    _mask: tuple[torch.Tensor, int, torch.dtype, torch.Tensor] | None = None

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):  # fmt: skip
        plain = key is not query or value is not query or key_padding_mask is not None
        if plain or need_weights or not (self.training and torch.is_grad_enabled()):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)  # fmt: skip
        return self._side_path(query, attn_mask, is_causal), None

    def _side_path(self, x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool):
        x = x if self.batch_first else x.transpose(0, 1)  # [N, L, D]
        n, length, dim = x.shape
        heads = self.num_heads
        qkv_adapter = self.parametrizations["in_proj_weight"][0]
        out_adapter = self.out_proj.parametrizations["weight"][0]
        w_in = self.parametrizations["in_proj_weight"].original
        qkv = qkv_adapter.linear(x, w_in, self.in_proj_bias)  # [N, L, 3D]
        # [N, L, 3, H, Dh] split on its 3 (a stack in the backward, no copy), then [N, H, L, Dh]
        q, k, v = (t.transpose(1, 2) for t in qkv.view(n, length, 3, heads, -1).unbind(2))
        mask = self._sdpa_mask(attn_mask, q.dtype, n, heads)
        drop = self.dropout if self.training else 0.0
        causal = is_causal and mask is None
        o = F.scaled_dot_product_attention(q, k, v, mask, drop, causal)  # [N, H, L, Dh]
        o = o.transpose(1, 2).reshape(n, length, dim)
        w_out = self.out_proj.parametrizations["weight"].original
        out = out_adapter.linear(o, w_out, self.out_proj.bias)
        return out if self.batch_first else out.transpose(0, 1)

    def _sdpa_mask(self, mask: torch.Tensor | None, dtype: torch.dtype, n: int, heads: int):
        """MHA's mask in SDPA's terms, in the compute dtype; a model's fixed causal mask is
        converted once, not at every forward."""
        if mask is None:
            return None
        cached = self._mask
        if cached is not None and cached[0] is mask and cached[1:3] == (mask._version, dtype):
            return cached[3]
        out = mask.logical_not() if mask.dtype == torch.bool else mask.to(dtype)
        if out.dim() == 3:  # [N * H, L, S]
            out = out.view(n, heads, *out.shape[1:])
        self._mask = (mask, mask._version, dtype, out)
        return out


def _flat_views(shapes: Sequence[torch.Size], dtype: torch.dtype, device) -> list[torch.Tensor]:
    """One buffer seen as tensors of these shapes (views of it: one allocation, no copies)."""
    sizes = [s.numel() for s in shapes]
    flat = torch.empty(sum(sizes), dtype=dtype, device=device)
    return [v.view(s) for v, s in zip(flat.split(sizes), shapes, strict=True)]


class _CastAll(torch.autograd.Function):
    """Many tensors cast in one go: one copy each way, not one per tensor (a launch each)."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *tensors: torch.Tensor):
        ctx.shapes = [t.shape for t in tensors]
        ctx.dtype, ctx.device = tensors[0].dtype, tensors[0].device
        ctx.set_materialize_grads(False)  # an unused factor keeps no gradient, as uncast
        out = _flat_views(ctx.shapes, dtype, ctx.device)
        torch._foreach_copy_(out, list(tensors))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return (None,) * (len(grads) + 1)
        views = _flat_views([ctx.shapes[i] for i in present], ctx.dtype, ctx.device)
        torch._foreach_copy_(views, [grads[i] for i in present])
        out: list[torch.Tensor | None] = [None] * len(grads)
        for i, view in zip(present, views, strict=True):
            out[i] = view
        return (None, *out)


@contextmanager
def adapters_cast(adapters: Sequence[LoRADelta], dtype: torch.dtype | None) -> Iterator[None]:
    """Within: every adapter's factors in `dtype` (an update's forward and backward), cast in
    one op; None leaves them as they are."""
    if dtype is None or not adapters:
        yield
        return
    factors = [t for a in adapters for t in (a.lora_A, a.lora_B)]
    cast = _CastAll.apply(dtype, *factors)
    for i, adapter in enumerate(adapters):
        adapter.cast = (cast[2 * i], cast[2 * i + 1])
    try:
        yield
    finally:
        for adapter in adapters:
            adapter.cast = None


def side_path_modules(net: nn.Module) -> Iterator[LoRAMultiheadAttention]:
    return (m for m in net.modules() if isinstance(m, LoRAMultiheadAttention))
