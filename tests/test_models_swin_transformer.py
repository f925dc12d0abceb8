"""models/swin_transformer.py: the paper's Swin numerically: the reference's sizes, FLOPs and state-dict keys, timm's
logits, SDPA equal to plain attention, padding to whole windows, gradient checkpointing.
"""

import pytest
import timm
import torch
from conftest import reference_model, tiny_model
from timm.models.swin_transformer import SwinTransformer as TimmSwin
from timm.models.swin_transformer import checkpoint_filter_fn

from models.window_ops import shift_mask_for


def set_attn_impl(model: torch.nn.Module, impl: str) -> None:
    for module in model.modules():
        if hasattr(module, "attn_impl"):
            module.attn_impl = impl


@pytest.mark.parametrize("cfg_name, params", [
    ("swin/swin_tiny_patch4_window7_224.yaml", 28_288_354),
    ("swin/swin_small_patch4_window7_224.yaml", 49_606_258),
    ("swin/swin_base_patch4_window7_224.yaml", 87_768_224),
    ("swin/swin_large_patch4_window7_224_22kto1k_finetune.yaml", 196_532_476),
    ("swin/swin_base_patch4_window12_384_finetune.yaml", 87_903_584),
])
def test_parameter_counts_equal_the_reference(cfg_name, params):
    assert sum(p.numel() for p in reference_model(cfg_name).parameters()) == params


@pytest.mark.parametrize("cfg_name, gmacs", [
    ("swin/swin_tiny_patch4_window7_224.yaml", 4.49),
    ("swin/swin_small_patch4_window7_224.yaml", 8.75),
    ("swin/swin_base_patch4_window7_224.yaml", 15.44),
    ("swin/swin_base_patch4_window12_384_finetune.yaml", 47.11),
])
def test_flops_equal_the_reference(cfg_name, gmacs):
    assert reference_model(cfg_name).flops() / 1e9 == pytest.approx(gmacs, rel=1e-3)


def reference_keys(depths, num_layers_with_downsample, shifted, ape=False):
    """The state-dict names of the reference implementation, written out from its module layout."""
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    keys += ["absolute_pos_embed"] if ape else []
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            keys += [p + "norm1.weight", p + "norm1.bias", p + "attn.relative_position_bias_table",
                     p + "attn.relative_position_index", p + "attn.qkv.weight", p + "attn.qkv.bias",
                     p + "attn.proj.weight", p + "attn.proj.bias", p + "norm2.weight", p + "norm2.bias",
                     p + "mlp.fc1.weight", p + "mlp.fc1.bias", p + "mlp.fc2.weight", p + "mlp.fc2.bias"]
            keys += [p + "attn_mask"] if shifted(i, j) else []
        if i < num_layers_with_downsample:
            keys += [f"layers.{i}.downsample.reduction.weight", f"layers.{i}.downsample.norm.weight",
                     f"layers.{i}.downsample.norm.bias"]
    return keys + ["norm.weight", "norm.bias", "head.weight", "head.bias"]


def test_state_dict_keys_equal_the_reference():
    model = reference_model("swin_tiny.yaml")
    # Stage 3 (7x7 tokens) fits one 7x7 window, so the reference drops its shift and mask.
    expected = reference_keys((2, 2, 6, 2), 3, lambda i, j: j % 2 == 1 and i < 3)
    assert sorted(model.state_dict()) == sorted(expected)
    assert model.state_dict()["layers.0.blocks.1.attn_mask"].shape == (64, 49, 49)
    assert model.state_dict()["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (169, 3)
    ape = tiny_model("MODEL.SWIN.APE", "True")
    assert sorted(ape.state_dict()) == sorted(reference_keys((2, 2), 1, lambda i, j: i == 0 and j == 1, ape=True))


def timm_logits(model: torch.nn.Module, timm_model: torch.nn.Module, x: torch.Tensor) -> tuple:
    timm_model.load_state_dict(checkpoint_filter_fn(model.state_dict(), timm_model), strict=True)
    with torch.no_grad():
        return model.eval()(x), timm_model.eval()(x)


def test_logits_equal_timm_swin_tiny_224():
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours, theirs = timm_logits(reference_model("swin_tiny.yaml"), timm.create_model("swin_tiny_patch4_window7_224"), x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_logits_equal_timm_small_config_other_size():
    model = tiny_model("DATA.IMG_SIZE", "64", "MODEL.SWIN.EMBED_DIM", "32")
    theirs = TimmSwin(img_size=64, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
                      num_classes=10)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours, reference = timm_logits(model, theirs, x)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_sdpa_and_plain_attention_agree():
    model = reference_model("swin_tiny.yaml").eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    outputs = {}
    for impl in ("plain", "sdpa"):
        set_attn_impl(model, impl)
        with torch.no_grad():
            outputs[impl] = model(x)
    torch.testing.assert_close(outputs["sdpa"], outputs["plain"], atol=1e-5, rtol=1e-5)


def test_sdpa_and_plain_gradients_agree():
    model = tiny_model()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    grads = {}
    for impl in ("plain", "sdpa"):
        set_attn_impl(model, impl)
        model.zero_grad()
        model(x).square().mean().backward()
        grads[impl] = model.layers[0].blocks[1].attn.relative_position_bias_table.grad.clone()
    torch.testing.assert_close(grads["sdpa"], grads["plain"], atol=1e-6, rtol=1e-5)


def test_other_input_sizes_are_padded_to_whole_windows():
    model = tiny_model().eval()
    x = torch.randn(2, 3, 44, 52, generator=torch.Generator().manual_seed(5))  # 11x13 tokens: padded windows
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32))


def test_configured_size_uses_the_stored_mask():
    model = tiny_model().eval()
    block = model.layers[0].blocks[1]
    assert block.shift_size == 2
    assert shift_mask_for(block, 8, 8, torch.device("cpu")) is block.attn_mask
    assert shift_mask_for(block, 12, 12, torch.device("cpu")).shape == (9, 16, 16)
    assert shift_mask_for(model.layers[0].blocks[0], 8, 8, torch.device("cpu")) is None


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    grads = []
    for use_checkpoint in ("False", "True"):
        model = tiny_model("TRAIN.USE_CHECKPOINT", use_checkpoint)
        model(x).sum().backward()
        grads.append(model.patch_embed.proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_no_weight_decay_names():
    model = tiny_model()
    assert model.no_weight_decay() == {"absolute_pos_embed"}
    assert model.no_weight_decay_keywords() == {"relative_position_bias_table"}


def test_headless_model():
    model = tiny_model("MODEL.NUM_CLASSES", "0")
    assert isinstance(model.head, torch.nn.Identity)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)
