"""Mixed precision without casts at every forward: frozen matrices kept in bf16, layer norms
that read bf16 activations directly.

Under autocast every frozen weight is cast to bf16 at every forward, and on CUDA every layer
norm casts its input to fp32 and its output back: a copy kernel each, a quarter of the GPU's
time in a LoRA step. Kept in bf16, the weights need no cast; a layer norm given bf16 input and
fp32 parameters computes its statistics in fp32 itself (PyTorch's mixed-type kernels) and
returns bf16.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device` without stalling the host: from pageable memory a CUDA copy
    waits for every kernel queued before it; from pinned memory it is queued like one."""
    if device.type != "cuda" or tensor.device == device:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class MixedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (and open_clip's subclasses) computing in its input's dtype, autocast or
    not. CUDA's kernel wants its parameters in that dtype too (it accumulates in fp32 itself):
    frozen ones are stored so (keep_frozen_in), trainable ones are cast per forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


def frozen_matrices(net: nn.Module) -> Iterator[nn.Parameter]:
    """The frozen weights and biases that autocast casts at every forward: linear and conv
    layers, attention projections (a LoRA parametrization's original), the towers' final
    projections."""
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
            params = list(module.parameters(recurse=False))
            if parametrize.is_parametrized(module):
                params += [plist.original for plist in module.parametrizations.values()]
            yield from (p for p in params if not p.requires_grad)
    visual = getattr(net, "visual", None)
    heads = [getattr(visual, "proj", None), getattr(net, "text_projection", None)]
    yield from (p for p in heads if isinstance(p, nn.Parameter) and not p.requires_grad)


def keep_frozen_in(net: nn.Module, dtype: torch.dtype) -> None:
    """Frozen matrices and the text tower's causal mask stored in `dtype`; layer norms that
    take it as it comes. The model must then run under autocast to `dtype`."""
    for param in frozen_matrices(net):
        param.data = param.data.to(dtype)
    for module in net.modules():
        if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            module.__class__ = MixedLayerNorm
            for param in module.parameters(recurse=False):
                if not param.requires_grad:
                    param.data = param.data.to(dtype)
        mask = module._buffers.get("attn_mask")  # else cast again in every block
        if mask is not None and mask.is_floating_point():
            module._buffers["attn_mask"] = mask.to(dtype)
