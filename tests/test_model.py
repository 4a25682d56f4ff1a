"""Model building, PEFT modes, LoRA identity at step 0, exports."""

from __future__ import annotations

import re

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from streamer.config import ModelConfig, PeftConfig
from streamer.learning.model import ClipModel, ModelLoadError
from streamer.service.pipeline import build_engine

from .conftest import tiny_settings

CPU = torch.device("cpu")
TEXTS = ["a photo of a zero.", "a photo of a seven."]


def _inputs() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _plain_open_clip(pretrained=None):
    net = open_clip.create_model("streamer-tiny", pretrained=pretrained).eval()
    return net, open_clip.get_tokenizer("streamer-tiny")


def test_lora_model_at_step_zero_is_exactly_the_base_model():
    model = ClipModel(ModelConfig(arch="streamer-tiny"), CPU, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same initialisation as ClipModel(seed=0)
        base, tokenizer = _plain_open_clip()
    base.requires_grad_(False)  # frozen, as the base model is (attention kernels depend on it)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model.encode_images(x), F.normalize(base.encode_image(x), dim=-1))
        assert torch.equal(
            model.encode_texts(TEXTS), F.normalize(base.encode_text(tokenizer(TEXTS)), dim=-1)
        )


def test_lora_trains_only_adapters_on_qkv_and_output_of_every_block():
    model = ClipModel(ModelConfig(arch="streamer-tiny"), CPU)
    names = list(model.trainable_parameters())
    assert all("lora_" in n for n in names)
    # 2 blocks x 2 towers x (in_proj, out_proj) x (A, B)
    assert len(names) == 16
    assert sum("in_proj_weight" in n for n in names) == 8


@pytest.mark.parametrize("towers", ["image", "text"])
def test_one_tower_mode_leaves_the_other_tower_frozen(towers):
    peft = PeftConfig(towers=towers)
    model = ClipModel(ModelConfig(arch="streamer-tiny", peft=peft), CPU)
    visual = [n for n in model.trainable_parameters() if n.startswith("visual.")]
    assert (len(visual) > 0) == (towers == "image")
    assert (len(visual) == len(model.trainable_parameters())) == (towers == "image")


def test_last_blocks_and_full_modes_choose_the_expected_parameters():
    last = ClipModel(
        ModelConfig(arch="streamer-tiny", peft=PeftConfig(mode="last_blocks", last_blocks=1)), CPU
    )
    names = set(last.trainable_parameters())
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in names
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" not in names
    assert {"visual.proj", "text_projection", "ln_final.weight"} <= names
    full = ClipModel(ModelConfig(arch="streamer-tiny", peft=PeftConfig(mode="full")), CPU)
    assert len(full.trainable_parameters()) == len(list(full.net.parameters()))


def test_sit_step_moves_adapters_in_both_towers(digit_stream):
    engine = build_engine(tiny_settings())
    before = engine.model.trainable_state()
    engine.learner.step([engine.to_pair(s) for s in digit_stream[:16]])
    after = engine.model.trainable_state()
    moved = {n.split(".")[0] for n in before if not torch.equal(before[n], after[n])}
    assert moved == {"visual", "transformer"}  # image tower and text tower


def test_trainable_export_round_trips(tmp_path, digit_stream):
    engine = build_engine(tiny_settings())
    engine.learner.step([engine.to_pair(s) for s in digit_stream[:16]])
    path = tmp_path / "adapters.safetensors"
    engine.model.save_trainable(path)
    fresh = build_engine(tiny_settings())
    fresh.model.load_trainable(path)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(engine.model.encode_images(x), fresh.model.encode_images(x))


def test_merged_export_loads_in_plain_open_clip(tmp_path, digit_stream):
    engine = build_engine(tiny_settings())
    engine.learner.step([engine.to_pair(s) for s in digit_stream[:16]])
    path = tmp_path / "merged.safetensors"
    engine.model.save_merged(path)
    net, tokenizer = _plain_open_clip(pretrained=str(path))
    x = _inputs()
    with torch.no_grad():
        ours = engine.model.encode_images(x)
        theirs = F.normalize(net.encode_image(x), dim=-1)
        assert torch.allclose(ours, theirs, atol=1e-5)
        ours_t = engine.model.encode_texts(TEXTS)
        theirs_t = F.normalize(net.encode_text(tokenizer(TEXTS)), dim=-1)
        assert torch.allclose(ours_t, theirs_t, atol=1e-5)


def test_a_local_weights_file_is_loaded(tmp_path):
    net, _ = _plain_open_clip()
    from safetensors.torch import save_file

    path = tmp_path / "base.safetensors"
    save_file(net.state_dict(), str(path))
    model = ClipModel(ModelConfig(arch="streamer-tiny", pretrained=str(path)), CPU, seed=123)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model.encode_images(x), F.normalize(net.encode_image(x), dim=-1))


def test_missing_weights_file_is_a_clear_error_naming_the_path(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        ClipModel(ModelConfig(arch="streamer-tiny", pretrained=str(path)), CPU)


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors"):
        ClipModel(ModelConfig(arch="streamer-tiny", pretrained=str(path)), CPU)


def test_unknown_tag_and_arch_are_rejected_without_network():
    with pytest.raises(ModelLoadError, match="neither a file nor a known tag"):
        ClipModel(ModelConfig(arch="streamer-tiny", pretrained="laion9b"), CPU)
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        ClipModel(ModelConfig(arch="ViT-Z-99"), CPU)


def test_pretrained_tag_offline_names_the_local_alternative(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(arch="RN50", pretrained="openai", cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        ClipModel(cfg, CPU)


@pytest.mark.parametrize(("arch", "size"), [("streamer-tiny", (50, 37)), ("ViT-B-32", (640, 427))])
def test_uint8_pixels_normalised_on_the_device_equal_open_clips_transform(arch, size):
    """The decode workers hand over uint8 at model resolution (4x less to hold and copy);
    normalising them later gives open_clip's own input, bit for bit on a CPU."""
    model = ClipModel(ModelConfig(arch=arch), CPU, seed=0)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    pixels = model.pixels(image)
    assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (model.image_size,) * 2
    expected = model.preprocess(image)
    assert torch.equal(model.normalise(pixels[None])[0], expected)
    with torch.no_grad():
        assert torch.equal(model.encode_images(pixels[None]), model.encode_images(expected[None]))


def test_stack_pixels_makes_mixed_rows_the_models_input():
    model = ClipModel(ModelConfig(arch="streamer-tiny"), CPU, seed=0)
    uint8 = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    floats = model.normalise(uint8[None])[0]
    stacked = model.stack_pixels([uint8, floats])
    assert stacked.dtype == torch.float32 and torch.equal(stacked[0], stacked[1])
    assert model.stack_pixels([uint8, uint8]).dtype == torch.uint8
