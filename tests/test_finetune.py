"""Fine-tuning controls: layer-wise lr decay by the reference's layer assignment, frozen stages and linear probes."""

import math
import os

import pytest
import torch
from conftest import ROOT, TINY_CFG, assert_user_error, run_main

from config import load_config
from jobs.engine import ModelEma
from lr_scheduler import ScaledLrs, build_scheduler
from models import build_model
from models.freeze import freeze
from optimizer import build_optimizer
from utils import ConfigError

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


def cosine_lr(step: int, base: float, warmup_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then a cosine over the remaining steps (the reference's WARMUP_PREFIX True)."""
    if step < warmup:
        return warmup_lr + step * (base - warmup_lr) / warmup
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


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


@pytest.mark.parametrize("how", ["stages", "probe"])
def test_a_frozen_fine_tune_changes_only_what_it_trains(how, tmp_path):
    torch.manual_seed(0)
    source = build_model(load_config(TINY_CFG))
    torch.save({"model": source.state_dict()}, tmp_path / "start.pth")
    opts = ["TRAIN.FREEZE_STAGES", "1"] if how == "stages" else ["TRAIN.LINEAR_PROBE", "True"]
    result = run_main("--cfg", TINY_CFG, "--pretrained", str(tmp_path / "start.pth"), "--output", str(tmp_path),
                      "--opts", *opts, "TRAIN.EMA_DECAY", "0.9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "frozen: " in result.stdout
    payload = torch.load(tmp_path / "swin_tiny_test" / "default" / "ckpt_epoch_1.pth", weights_only=True)
    trained = {"stages": ("layers.1.", "norm.", "head."), "probe": ("head.",)}[how]
    for name, start in source.state_dict().items():
        if not start.is_floating_point():
            continue
        moved = not torch.equal(payload["model"][name], start)
        assert moved == name.startswith(trained), name
        assert torch.equal(payload["model_ema"][name], start) or name.startswith(trained), name
    assert set(payload["optimizer_param_names"]) == {n for n, _ in source.named_parameters() if n.startswith(trained)}


def test_every_update_runs_at_the_schedules_rate_for_its_index(tmp_path):
    """Update k (from 0) trains at schedule(k): the warm-up reaches BASE_LR exactly when it ends, as in timm."""
    from tools.plot_metrics import step_lrs

    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path), "--opts", "TRAIN.LAYER_DECAY", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    lrs = dict(step_lrs(str(tmp_path / "swin_tiny_test" / "default")))  # the rate of update k, set after update k-1
    config = load_config(TINY_CFG)
    per_epoch, scale = 1280 // config.DATA.BATCH_SIZE, config.DATA.BATCH_SIZE / 512
    assert sorted(lrs) == list(range(1, 2 * per_epoch + 1))
    for step in (1, 80, per_epoch - 1, per_epoch, per_epoch + 1, 2 * per_epoch - 1):
        expected = cosine_lr(step, config.TRAIN.BASE_LR * scale, config.TRAIN.WARMUP_LR * scale,
                             config.TRAIN.MIN_LR * scale, per_epoch, 2 * per_epoch)
        assert lrs[step] == pytest.approx(expected, rel=1e-6), step  # the head's rate: layer decay leaves it be


def _tiny_weights(path, seed: int, **entries) -> str:
    torch.manual_seed(seed)
    torch.save({"model": build_model(load_config(TINY_CFG)).state_dict(), **entries}, path)
    return str(path)


def test_a_rerun_from_other_pretrained_weights_is_another_run_not_a_finished_one(tmp_path):
    """MODEL.PRETRAINED is a training setting: the same command resumes (here: is finished), other weights or none
    are refused in one line, and an explicit --resume of the run may name any (its weights are the checkpoint's)."""
    first, second = _tiny_weights(tmp_path / "a.pth", 0), _tiny_weights(tmp_path / "b.pth", 1)
    one_epoch = ("--output", str(tmp_path / "out"), "--opts", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0")
    assert run_main("--cfg", TINY_CFG, "--pretrained", first, *one_epoch).returncode == 0
    again = run_main("--cfg", TINY_CFG, "--pretrained", first, *one_epoch)
    assert again.returncode == 0 and "is finished" in again.stdout, again.stderr[-2000:]
    for other in (("--pretrained", second), ()):
        refused = run_main("--cfg", TINY_CFG, *other, *one_epoch)
        changed = f"MODEL.PRETRAINED {first} -> {second if other else ''}"
        assert_user_error(refused, "trained with other settings", changed, "--tag")
    checkpoint = str(tmp_path / "out" / "swin_tiny_test" / "default" / "ckpt_epoch_0.pth")
    resumed = run_main("--cfg", TINY_CFG, "--pretrained", second, "--resume", checkpoint, *one_epoch)
    assert resumed.returncode == 0 and "is finished" in resumed.stdout, resumed.stderr[-2000:]


def _config_of(*argv: str):
    import main
    from config import get_config

    return get_config(main.parse_args(list(argv)))


def test_a_fine_tune_never_starts_in_the_folder_of_its_pretrained_weights(tmp_path):
    from checkpoints.run_folder import finetune_tag

    assert [finetune_tag(t) for t in ("default", "finetune", "finetune_2", "finetune_x", "my_finetune")] == \
        ["finetune", "finetune_2", "finetune_3", "finetune", "finetune"]
    for tag in ("default", "finetune", "finetune_2"):  # a run, a fine-tune of it, a fine-tune of that
        stored = load_config(TINY_CFG, ("TAG", tag, "OUTPUT", os.path.join(str(tmp_path), "swin_tiny_test", tag)))
        folder = tmp_path / "swin_tiny_test" / tag
        folder.mkdir(parents=True)
        source = _tiny_weights(folder / "ckpt_epoch_1.pth", 0, config=stored.dump())
        config = _config_of("--pretrained", source, "--data-path", str(tmp_path))
        assert config.OUTPUT == str(tmp_path / "swin_tiny_test" / finetune_tag(tag)), tag
    moved = tmp_path / "swin_tiny_test" / "finetune" / "moved_here.pth"  # stored as a run tagged default
    stored = load_config(TINY_CFG, ("OUTPUT", os.path.join(str(tmp_path), "swin_tiny_test", "default")))
    _tiny_weights(moved, 0, config=stored.dump())
    assert _config_of("--pretrained", str(moved), "--data-path", str(tmp_path)).OUTPUT == \
        str(tmp_path / "swin_tiny_test" / "finetune_2")
    inside = str(tmp_path / "swin_tiny_test" / "default" / "ckpt_epoch_1.pth")
    for argv in (("--cfg", TINY_CFG, "--output", str(tmp_path)), ("--tag", "default", "--data-path", str(tmp_path))):
        with pytest.raises(ConfigError, match="lies in .*output folder of this run.*--tag"):
            _config_of(*argv, "--pretrained", inside)
    assert _config_of("--cfg", TINY_CFG, "--output", str(tmp_path), "--pretrained", inside, "--eval").EVAL_MODE


@pytest.mark.parametrize("data_names, rows", [(list("abcd"), [0, 1, 2, 3]), (list("dcba"), [3, 2, 1, 0]),
                                              (list("cadb"), [2, 0, 3, 1]), (list("bd"), [1, 3]),
                                              (list("abcz"), None), (None, [0, 1, 2, 3])])
def test_a_pretrained_head_that_names_its_classes_is_mapped_to_the_datas_by_name(data_names, rows, tmp_path):
    """A checkpoint of ours names its classes: its head rows follow the data's class order (the folder's sorted
    names), the same head in the checkpoint's order would answer for other classes; a class it does not know
    starts the head from scratch, and the caller is told so."""
    import logging

    from checkpoints.weights import load_pretrained

    source = build_model(load_config(TINY_CFG, ("MODEL.NUM_CLASSES", "4")))
    torch.save({"model": source.state_dict(), "class_names": list("abcd")}, tmp_path / "named.pth")
    target = build_model(load_config(TINY_CFG, ("MODEL.NUM_CLASSES", str(len(data_names or "abcd")))))
    fresh = load_pretrained(target, str(tmp_path / "named.pth"), logging.getLogger("test"), data_names)
    if rows is None:
        assert fresh == {"head.weight", "head.bias"}
        return
    assert fresh == set()
    torch.testing.assert_close(target.head.weight, source.head.weight[rows], atol=0, rtol=0)
    torch.testing.assert_close(target.head.bias, source.head.bias[rows], atol=0, rtol=0)
