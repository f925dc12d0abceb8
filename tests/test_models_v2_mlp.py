import glob
import logging
import os

import pytest
import timm
import torch
from conftest import ROOT, TINY_CFG
from timm.models.swin_transformer_v2 import SwinTransformerV2 as TimmSwinV2
from timm.models.swin_transformer_v2 import checkpoint_filter_fn

from checkpoints.weights import load_pretrained
from config import load_config
from models import build_model

LOGGER = logging.getLogger("test")


def build(cfg_name: str, *opts: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(os.path.join(ROOT, "configs", cfg_name), opts))


def tiny_v2(*opts: str) -> torch.nn.Module:
    torch.manual_seed(0)
    v2 = ["MODEL.TYPE", "'swinv2'", "MODEL.SWINV2.EMBED_DIM", "16", "MODEL.SWINV2.DEPTHS", "[2, 2]",
          "MODEL.SWINV2.NUM_HEADS", "[2, 4]", "MODEL.SWINV2.WINDOW_SIZE", "4"]
    return build_model(load_config(TINY_CFG, v2 + list(opts)))


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere: V2 starts with zero post-norm gains, which would hide most of the network."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("cfg_name, opts, params, gmacs", [
    ("swinv2/swinv2_tiny_patch4_window8_256.yaml", (), 28_347_154, 5.93),
    ("swinv2/swinv2_tiny_patch4_window16_256.yaml", (), 28_347_154, 6.61),
    ("swinv2/swinv2_base_patch4_window12_192_22k.yaml", ("MODEL.NUM_CLASSES", "21841"), 109_280_841, 11.78),
    ("swinmlp/swin_mlp_base_patch4_window7_224.yaml", (), 60_659_416, 10.42),
])
def test_parameter_counts_and_flops(cfg_name, opts, params, gmacs):
    model = build(cfg_name, *opts)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.flops() / 1e9 == pytest.approx(gmacs, rel=2e-3)


def test_swinv2_logits_equal_timm():
    model = perturb(build("swinv2/swinv2_tiny_patch4_window8_256.yaml"))
    theirs = timm.create_model("swinv2_tiny_window8_256").eval()
    theirs.load_state_dict(checkpoint_filter_fn(model.state_dict(), theirs), strict=True)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_swinv2_small_config_equals_timm_and_sdpa_equals_plain():
    model = perturb(tiny_v2())
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
    keys = build("swinv2/swinv2_tiny_patch4_window8_256.yaml").state_dict().keys()
    prefix = "layers.0.blocks.1.attn."
    for name in ("logit_scale", "q_bias", "v_bias", "cpb_mlp.0.weight", "cpb_mlp.0.bias", "cpb_mlp.2.weight",
                 "relative_coords_table", "relative_position_index", "qkv.weight", "proj.weight"):
        assert prefix + name in keys
    assert prefix + "qkv.bias" not in keys and "layers.0.blocks.1.attn_mask" in keys
    assert "layers.0.downsample.norm.weight" in keys and "layers.2.blocks.0.attn.cpb_mlp.2.bias" not in keys


def test_swinv2_finetune_across_windows_keeps_the_cpb_mlp(tmp_path):
    source = perturb(tiny_v2("DATA.IMG_SIZE", "48", "MODEL.SWINV2.WINDOW_SIZE", "3"))
    path = tmp_path / "w3.pth"
    torch.save({"model": source.state_dict()}, path)
    target = tiny_v2("DATA.IMG_SIZE", "64", "MODEL.SWINV2.WINDOW_SIZE", "8",
                     "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[3, 3]")
    load_pretrained(target, str(path), LOGGER)
    key = "layers.0.blocks.0.attn.cpb_mlp.0.weight"
    torch.testing.assert_close(target.state_dict()[key], source.state_dict()[key])
    table = target.layers[0].blocks[0].attn.relative_coords_table
    assert table.shape == (1, 15, 15, 2) and table.abs().max() > 1.0  # coordinates normalised by the old window


@pytest.mark.parametrize("cfg_file", sorted(glob.glob(os.path.join(ROOT, "configs", "swin*", "swin*.yaml"))))
def test_every_reference_config_builds_and_takes_a_training_step(cfg_file):
    """Each config's sizes, windows and heads at full resolution, with one block per stage to keep it quick."""
    family = os.path.basename(os.path.dirname(cfg_file))
    model_type, group = {"swin": ("swin", "SWIN"), "swinv2": ("swinv2", "SWINV2"),
                         "swinmlp": ("swin_mlp", "SWIN_MLP")}[family]
    cfg = load_config(cfg_file, ["MODEL.DROP_PATH_RATE", "0.0", f"MODEL.{group}.DEPTHS", "[1, 1, 1, 1]"])
    assert cfg.MODEL.TYPE == model_type
    torch.manual_seed(0)
    model = build_model(cfg)
    size = cfg.DATA.IMG_SIZE
    loss = model(torch.randn(1, 3, size, size)).logsumexp(dim=1).sum()
    loss.backward()
    assert torch.isfinite(loss) and model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_swin_mlp_trains_and_pads_other_sizes():
    torch.manual_seed(0)
    model = build_model(load_config(TINY_CFG, ["MODEL.TYPE", "'swin_mlp'", "MODEL.SWIN_MLP.EMBED_DIM", "16",
                                               "MODEL.SWIN_MLP.DEPTHS", "[2, 2]", "MODEL.SWIN_MLP.NUM_HEADS", "[2, 4]",
                                               "MODEL.SWIN_MLP.WINDOW_SIZE", "4"]))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.layers[0].blocks[1].spatial_mlp.weight.shape == (32, 16, 1)
    assert model.eval()(torch.randn(1, 3, 44, 36)).shape == (1, 10)
