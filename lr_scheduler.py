"""Per-step learning-rate schedules with linear warm-up, and the reference's linear lr scaling."""

import bisect
from dataclasses import dataclass

from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch.optim import Optimizer
from yacs.config import CfgNode

from utils import ConfigError

# The linear schedule ends at this fraction of the base rate, as in the reference.
_LINEAR_END_RATE = 0.01


class ReferenceMultiStepLRScheduler(MultiStepLRScheduler):
    """timm's multistep schedule with the reference's timing: milestone m applies from step m, not m - 1."""

    def get_curr_decay_steps(self, t: int) -> int:
        return bisect.bisect_right(self.decay_t, t)


@dataclass(frozen=True)
class ScaledLrs:
    """BASE_LR, WARMUP_LR and MIN_LR scaled to the real global batch."""

    base: float
    warmup: float
    min: float


def scale_lrs(config: CfgNode, world_size: int) -> ScaledLrs:
    """The reference scaling: every rate times (batch per process x processes / 512) x accumulation steps."""
    train = config.TRAIN
    factor = config.DATA.BATCH_SIZE * world_size / 512.0 * train.ACCUMULATION_STEPS
    return ScaledLrs(train.BASE_LR * factor, train.WARMUP_LR * factor, train.MIN_LR * factor)


def build_scheduler(config: CfgNode, optimizer: Optimizer, steps_per_epoch: int, lrs: ScaledLrs) -> Scheduler:
    """TRAIN.LR_SCHEDULER.NAME, stepped once per optimizer step (`step_update(step)`)."""
    train, sched = config.TRAIN, config.TRAIN.LR_SCHEDULER
    num_steps = int(train.EPOCHS * steps_per_epoch)
    warmup_steps = int(train.WARMUP_EPOCHS * steps_per_epoch)
    warmup = dict(warmup_lr_init=lrs.warmup, warmup_t=warmup_steps, t_in_epochs=False)
    name = sched.NAME
    if name == "cosine":
        t_initial = num_steps - warmup_steps if sched.WARMUP_PREFIX else num_steps
        return CosineLRScheduler(optimizer, t_initial=t_initial, lr_min=lrs.min, cycle_limit=1,
                                 warmup_prefix=sched.WARMUP_PREFIX, **warmup)
    if name == "linear":
        return PolyLRScheduler(optimizer, t_initial=num_steps - warmup_steps, power=1.0,
                               lr_min=lrs.base * _LINEAR_END_RATE, warmup_prefix=True, **warmup)
    if name == "step":
        return StepLRScheduler(optimizer, decay_t=int(sched.DECAY_EPOCHS * steps_per_epoch),
                               decay_rate=sched.DECAY_RATE, warmup_prefix=False, **warmup)
    if name == "multistep":
        milestones = [int(m * steps_per_epoch) for m in sched.MULTISTEPS]
        return ReferenceMultiStepLRScheduler(optimizer, decay_t=milestones, decay_rate=sched.GAMMA,
                                             warmup_prefix=False, **warmup)
    raise ConfigError(f"TRAIN.LR_SCHEDULER.NAME {name!r} is not known; use cosine, linear, step or multistep")
