import math

import pytest
import torch
from conftest import TINY_CFG

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
