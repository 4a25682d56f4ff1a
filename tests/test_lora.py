"""LoRA's training side path, bf16 storage of the frozen weights, an update without read-backs."""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from streamer.config import ModelConfig
from streamer.learning.lora import LoRAMultiheadAttention, adapters_cast
from streamer.learning.model import ClipModel
from streamer.learning.peft import lora_modules, merged_state_dict
from streamer.service.pipeline import build_engine

from .conftest import tiny_settings

CPU = torch.device("cpu")
TEXTS = ["a photo of a zero.", "a photo of a seven.", "a photo of a two."]


def _moved(seed: int = 1) -> ClipModel:
    """A LoRA model whose adapters are not zero (as after learning)."""
    model = ClipModel(ModelConfig(arch="streamer-tiny"), CPU, seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in lora_modules(model.net):
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g) * 0.1)
    return model


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_side_path_computes_what_the_adapted_weight_computes():
    model = _moved()
    assert any(isinstance(m, LoRAMultiheadAttention) for m in model.net.modules())
    with torch.no_grad():  # the parametrization: W + s*B*A, nn.MultiheadAttention's own code
        img_served, txt_served = model.encode_images(_images()), model.encode_texts(TEXTS)
    model.net.train()  # the side path: x*W^T + s*(x*A^T)*B^T (dropout is 0 by default)
    img_trained, txt_trained = model.encode_images(_images()), model.encode_texts(TEXTS)
    assert torch.allclose(img_trained, img_served, atol=1e-5)
    assert torch.allclose(txt_trained, txt_served, atol=1e-5)
    img_trained.sum().backward()
    assert all(a.lora_B.grad is not None for a in lora_modules(model.net.visual))


def test_factors_cast_in_one_op_give_the_gradients_of_the_uncast_factors():
    model = _moved()
    model.net.train()
    adapters = list(lora_modules(model.net))

    def grads(dtype) -> list[torch.Tensor]:  # under bf16 autocast, which casts them per op
        model.net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16), adapters_cast(adapters, dtype):
            model.encode_images(_images()).float().pow(2).sum().backward()
        return [a.lora_B.grad.clone() for a in adapters if a.lora_B.grad is not None]

    plain, cast = grads(None), grads(torch.bfloat16)
    assert len(plain) == len(cast) > 0
    assert all(c.dtype == torch.float32 for c in cast)  # back in the parameters' dtype
    assert all(torch.equal(p, c) for p, c in zip(plain, cast, strict=True))  # the same casts


def test_frozen_weights_in_bf16_serve_close_to_fp32_and_export_in_fp32():
    reference, model = _moved(), _moved()
    model.store_frozen(torch.bfloat16)
    x = _images()
    with torch.no_grad():
        close = torch.nn.functional.cosine_similarity(
            model.encode_images(x), reference.encode_images(x)
        )
    assert close.min() > 0.99  # bf16 rounding, not another model
    merged = merged_state_dict(model.net)
    assert all(v.dtype == torch.float32 for v in merged.values() if v.is_floating_point())
    assert not any(p.requires_grad and p.dtype != torch.float32 for p in model.net.parameters())
    # CUDA's layer norm wants its parameters in its input's dtype: frozen ones are stored so
    norms = [m for m in model.net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.bfloat16 for m in norms)


def test_an_optimizer_state_from_before_fused_adamw_resumes(digit_stream):
    engine = build_engine(tiny_settings())
    pairs = [engine.to_pair(s) for s in digit_stream[:32]]
    engine.learner.step(pairs[:16])
    state = engine.learner.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=None)  # as a non-fused AdamW saved it
    resumed = build_engine(tiny_settings())
    resumed.learner.load_state_dict(state)
    assert resumed.learner.step(pairs[16:]).updates == resumed.learner.cfg.steps_per_batch


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_an_update_reads_nothing_back_from_the_device(digit_stream):
    engine = build_engine(tiny_settings(learner={"precision": "bf16", "replay_per_step": 4}))
    pairs = [engine.to_pair(s) for s in digit_stream[:24]]
    engine.learner.step(pairs[:8])
    counter = _Count()
    with counter:
        loss, applied = engine.learner._update(pairs[8:20])
    assert counter.ops["_local_scalar_dense"] == 0 and counter.ops["nonzero"] == 0
    assert bool(applied) and torch.isfinite(loss)
