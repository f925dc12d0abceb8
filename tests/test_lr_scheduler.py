"""lr_scheduler.py: the reference's schedules per step (cosine with warm-up, linear, step, multistep), scaled by the
global batch, and every update at its step's rate.
"""

import math

import pytest
import torch
from conftest import TINY_CFG, cosine_lr, run_main

from config import load_config
from lr_scheduler import build_scheduler, scale_lrs

STEPS_PER_EPOCH = 10


def schedule(*opts: str):
    cfg = load_config(TINY_CFG, ["TRAIN.EPOCHS", "10", "TRAIN.WARMUP_EPOCHS", "2", "TRAIN.BASE_LR", "1e-3",
                                 "TRAIN.WARMUP_LR", "1e-6", "TRAIN.MIN_LR", "1e-5", "DATA.BATCH_SIZE", "512", *opts])
    lrs = scale_lrs(cfg, world_size=1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lrs.base)
    scheduler = build_scheduler(cfg, optimizer, STEPS_PER_EPOCH, lrs)

    def lr_at(step: int) -> float:
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    return lr_at


def warmup(step: int) -> float:
    return 1e-6 + step * (1e-3 - 1e-6) / 20


@pytest.mark.parametrize("step", [0, 5, 19, 20, 50, 99, 100])
def test_cosine_with_warmup_prefix(step):
    expected = warmup(step) if step < 20 else 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (step - 20) / 80))
    assert schedule()(step) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("step", [25, 60, 99])
def test_cosine_without_warmup_prefix(step):
    expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * step / 100))
    assert schedule("TRAIN.LR_SCHEDULER.WARMUP_PREFIX", "False")(step) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("step", [10, 20, 60, 99])
def test_linear(step):
    expected = warmup(step) if step < 20 else 1e-3 - (1e-3 - 1e-5) * (step - 20) / 80
    assert schedule("TRAIN.LR_SCHEDULER.NAME", "'linear'")(step) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("step", [20, 29, 30, 61])
def test_step(step):
    expected = 1e-3 * 0.1 ** (step // 30)
    lr_at = schedule("TRAIN.LR_SCHEDULER.NAME", "'step'", "TRAIN.LR_SCHEDULER.DECAY_EPOCHS", "3")
    assert lr_at(step) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("step", [20, 39, 40, 70])
def test_multistep(step):
    expected = 1e-3 * 0.5 ** sum(step >= m for m in (40, 70))
    lr_at = schedule("TRAIN.LR_SCHEDULER.NAME", "'multistep'", "TRAIN.LR_SCHEDULER.MULTISTEPS", "[4, 7]",
                     "TRAIN.LR_SCHEDULER.GAMMA", "0.5")
    assert lr_at(step) == pytest.approx(expected, rel=1e-9)


def test_linear_scaling_by_global_batch_and_accumulation():
    cfg = load_config(TINY_CFG, ["DATA.BATCH_SIZE", "128", "TRAIN.ACCUMULATION_STEPS", "2", "TRAIN.BASE_LR", "5e-4",
                                 "TRAIN.WARMUP_LR", "5e-7", "TRAIN.MIN_LR", "5e-6"])
    lrs = scale_lrs(cfg, world_size=4)
    assert lrs.base == pytest.approx(5e-4 * 128 * 4 / 512 * 2)
    assert lrs.warmup == pytest.approx(5e-7 * 2) and lrs.min == pytest.approx(5e-6 * 2)


def test_unknown_scheduler_is_a_config_error():
    with pytest.raises(Exception, match="use one of cosine"):
        schedule("TRAIN.LR_SCHEDULER.NAME", "'poly'")


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
