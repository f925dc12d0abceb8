"""models/swin_transformer_v2.py: Swin V2 equals timm's numerically and keeps the reference's names and order.
"""

import logging

import timm
import torch
from conftest import TINY_CFG, TINY_V2, reference_model, tiny_model
from timm.models.swin_transformer_v2 import SwinTransformerV2 as TimmSwinV2
from timm.models.swin_transformer_v2 import checkpoint_filter_fn

from checkpoints.weights import load_pretrained
from config import load_config
from models import build_model

LOGGER = logging.getLogger("test")


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere: V2 starts with zero post-norm gains, which would hide most of the network."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def test_swinv2_logits_equal_timm():
    model = perturb(reference_model("swinv2/swinv2_tiny_patch4_window8_256.yaml"))
    theirs = timm.create_model("swinv2_tiny_window8_256").eval()
    theirs.load_state_dict(checkpoint_filter_fn(model.state_dict(), theirs), strict=True)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_swinv2_small_config_equals_timm_and_sdpa_equals_plain():
    model = perturb(tiny_model(*TINY_V2))
    theirs = TimmSwinV2(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                        num_classes=10).eval()
    theirs.load_state_dict(checkpoint_filter_fn(model.state_dict(), theirs), strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    outputs = {}
    with torch.no_grad():
        for impl in ("plain", "sdpa"):
            for module in model.modules():
                if hasattr(module, "attn_impl"):
                    module.attn_impl = impl
            outputs[impl] = model(x)
        torch.testing.assert_close(outputs["plain"], theirs(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["sdpa"], outputs["plain"], atol=1e-5, rtol=1e-5)


def test_swinv2_reference_names():
    keys = reference_model("swinv2/swinv2_tiny_patch4_window8_256.yaml").state_dict().keys()
    prefix = "layers.0.blocks.1.attn."
    for name in ("logit_scale", "q_bias", "v_bias", "cpb_mlp.0.weight", "cpb_mlp.0.bias", "cpb_mlp.2.weight",
                 "relative_coords_table", "relative_position_index", "qkv.weight", "proj.weight"):
        assert prefix + name in keys
    assert prefix + "qkv.bias" not in keys and "layers.0.blocks.1.attn_mask" in keys
    assert "layers.0.downsample.norm.weight" in keys and "layers.2.blocks.0.attn.cpb_mlp.2.bias" not in keys


def test_swinv2_finetune_across_windows_keeps_the_cpb_mlp(tmp_path):
    source = perturb(tiny_model(*TINY_V2, "DATA.IMG_SIZE", "48", "MODEL.SWINV2.WINDOW_SIZE", "3"))
    path = tmp_path / "w3.pth"
    torch.save({"model": source.state_dict()}, path)
    target = tiny_model(*TINY_V2, "DATA.IMG_SIZE", "64", "MODEL.SWINV2.WINDOW_SIZE", "8",
                     "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[3, 3]")
    load_pretrained(target, str(path), LOGGER)
    key = "layers.0.blocks.0.attn.cpb_mlp.0.weight"
    torch.testing.assert_close(target.state_dict()[key], source.state_dict()[key])
    table = target.layers[0].blocks[0].attn.relative_coords_table
    assert table.shape == (1, 15, 15, 2) and table.abs().max() > 1.0  # coordinates normalised by the old window


def test_swinv2_registers_parameters_in_the_reference_order():
    """Reference optimizer states are matched by position: our V2 block must list its tensors as the reference's
    (norm1, attn, norm2, mlp), written out here from the reference module layout."""
    config = load_config(TINY_CFG, ("MODEL.TYPE", "'swinv2'", "MODEL.SWINV2.EMBED_DIM", "16", "MODEL.SWINV2.DEPTHS",
                                    "[2, 2]", "MODEL.SWINV2.NUM_HEADS", "[2, 4]", "MODEL.SWINV2.WINDOW_SIZE", "4"))
    names = [n for n, _ in build_model(config).named_parameters() if n.startswith("layers.0.blocks.0.")]
    block = "layers.0.blocks.0."
    expected = ["norm1.weight", "norm1.bias", "attn.logit_scale", "attn.q_bias", "attn.v_bias",
                "attn.cpb_mlp.0.weight", "attn.cpb_mlp.0.bias", "attn.cpb_mlp.2.weight", "attn.qkv.weight",
                "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                "mlp.fc2.weight", "mlp.fc2.bias"]
    assert names == [block + n for n in expected]
