"""models/build.py: every family and reference config builds, has the reference's size, and trains a step.
"""

import glob
import os

import pytest
import torch
from conftest import ROOT, reference_model

from config import load_config
from models import build_model


@pytest.mark.parametrize("cfg_name, opts, params, gmacs", [
    ("swinv2/swinv2_tiny_patch4_window8_256.yaml", (), 28_347_154, 5.93),
    ("swinv2/swinv2_tiny_patch4_window16_256.yaml", (), 28_347_154, 6.61),
    ("swinv2/swinv2_base_patch4_window12_192_22k.yaml", ("MODEL.NUM_CLASSES", "21841"), 109_280_841, 11.78),
    ("swinmlp/swin_mlp_base_patch4_window7_224.yaml", (), 60_659_416, 10.42),
])
def test_parameter_counts_and_flops(cfg_name, opts, params, gmacs):
    model = reference_model(cfg_name, *opts)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.flops() / 1e9 == pytest.approx(gmacs, rel=2e-3)


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
