"""optimizer.py: the reference's parameter groups, layer decay, and what frozen or decoder parameters get.
"""

import os
import re

import pytest
import torch
from conftest import ROOT, SIMMIM, TINY_CFG, TINY_V2, cosine_lr, tiny_config

from config import load_config
from jobs.engine import ModelEma
from lr_scheduler import ScaledLrs, build_scheduler
from models import build_model
from models.freeze import freeze
from optimizer import build_optimizer

# Swin-T has depths 2, 2, 6, 2: 12 blocks, so layers 0 (embedding) to 13 (head). Expected layers written out by hand.
SWIN_T_LAYERS = {
    "patch_embed.proj.weight": 0, "patch_embed.norm.bias": 0,
    "layers.0.blocks.0.attn.qkv.weight": 1, "layers.0.blocks.1.mlp.fc2.bias": 2,
    "layers.0.downsample.reduction.weight": 2, "layers.0.downsample.norm.weight": 2,
    "layers.1.blocks.0.norm1.weight": 3, "layers.1.downsample.reduction.weight": 4,
    "layers.2.blocks.0.attn.relative_position_bias_table": 5, "layers.2.blocks.5.attn.proj.weight": 10,
    "layers.2.downsample.norm.bias": 10, "layers.3.blocks.0.mlp.fc1.weight": 11,
    "layers.3.blocks.1.norm2.weight": 12, "norm.weight": 13, "head.weight": 13, "head.bias": 13,
}


def test_layer_decay_lrs_follow_the_formula_for_swin_t():
    config = load_config(os.path.join(ROOT, "configs", "swin_tiny.yaml"),
                         ["TRAIN.LAYER_DECAY", "0.8", "TRAIN.EPOCHS", "3", "TRAIN.WARMUP_EPOCHS", "1"])
    model = build_model(config)
    lrs = ScaledLrs(base=1e-3, warmup=1e-6, min=1e-5)
    optimizer = build_optimizer(config, model, lrs.base, fused=False)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=10, lrs=lrs)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len({id(p) for g in optimizer.param_groups for p in g["params"]}) == len(params)
    for step in (0, 4, 10, 17, 29):
        scheduler.step_update(step)
        expected = cosine_lr(step, lrs.base, lrs.warmup, lrs.min, warmup=10, total=30)
        for name, layer in SWIN_T_LAYERS.items():
            lr = group_of[id(params[name])]["lr"]
            assert lr == pytest.approx(expected * 0.8 ** (13 - layer), rel=1e-9), (step, name)
    decayed = {group_of[id(params[n])]["weight_decay"] for n in ("layers.0.blocks.0.attn.qkv.weight", "head.weight")}
    exempt = {group_of[id(params[n])]["weight_decay"] for n in ("norm.weight", "head.bias", "patch_embed.norm.bias")}
    assert decayed == {config.TRAIN.WEIGHT_DECAY} and exempt == {0.0}


def test_without_layer_decay_the_two_reference_groups_stay():
    config = load_config(TINY_CFG)
    optimizer = build_optimizer(config, build_model(config), 1e-3, fused=False)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [config.TRAIN.WEIGHT_DECAY, 0.0]
    assert all("lr_scale" not in g for g in optimizer.param_groups)


def test_frozen_parameters_are_left_out_of_the_optimizer_and_the_ema():
    config = load_config(TINY_CFG)
    model = build_model(config)
    frozen = freeze(model, linear_probe=True)
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    optimizer = build_optimizer(config, model, 1e-3, fused=False)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(model.head.weight), id(model.head.bias)}
    ema = ModelEma(model, 0.5)
    with torch.no_grad():
        model.norm.weight.add_(1.0)  # a frozen tensor changed behind the EMA's back stays out of it
        model.head.weight.add_(1.0)
    before = ema.module.norm.weight.clone()
    ema.update()
    assert torch.equal(ema.module.norm.weight, before)
    torch.testing.assert_close(ema.module.head.weight, model.head.weight - 0.5)


@pytest.mark.parametrize("family", [(), TINY_V2], ids=["v1", "v2"])
def test_no_weight_decay_on_the_mask_token_position_tables_and_norms(family):
    config = tiny_config(*SIMMIM, *family)
    model = build_model(config)
    optimizer = build_optimizer(config, model, 1e-3, fused=False)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "encoder.mask_token" in exempt and "decoder.0.weight" in decayed
    assert "encoder.layers.0.blocks.0.attn.qkv.weight" in decayed
    tables = [n for n in names.values() if re.search(r"relative_position_bias_table|cpb_mlp|logit_scale", n)]
    assert tables and set(tables) <= exempt
    assert decayed | exempt == set(names.values())
