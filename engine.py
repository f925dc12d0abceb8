"""Training, evaluation and throughput loops over explicit objects; each returns a dict of floats."""

import contextlib
import copy
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn

from evaluation import ClassTally
from logger import MetricsWriter
from runtime import Runtime
from utils import UserError


class DivergedError(UserError):
    """The loss stayed non-finite for too many steps in a row."""


class ModelEma:
    """Exponential moving average of a model's floating-point weights, kept as a model to evaluate.

    Integer buffers (relative_position_index) are left as they are: averaging an index is meaningless;
    so are frozen parameters, which do not change.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.source = model
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.frozen = {name for name, param in model.named_parameters() if not param.requires_grad}

    @torch.no_grad()
    def update(self) -> None:
        source = self.source.state_dict()
        pairs = [(ema, source[name]) for name, ema in self.module.state_dict().items()
                 if ema.dtype.is_floating_point and name not in self.frozen]
        torch._foreach_lerp_([ema for ema, _ in pairs], [new for _, new in pairs], 1.0 - self.decay)


@dataclass
class TrainContext:
    """Everything a training epoch uses besides the data."""

    model: nn.Module
    criterion: Optional[nn.Module]  # None: the model returns its own loss (SimMIM, given images and masks)
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler
    rt: Runtime
    logger: logging.Logger
    mixup_fn: Optional[Callable] = None
    clip_grad: float = 0.0
    accumulation_steps: int = 1
    print_freq: int = 10
    max_nonfinite: int = 10
    step_hook: Optional[Callable[[int, int, int], None]] = None
    stop_signal: Callable[[], int] = lambda: 0
    ema: Optional[ModelEma] = None
    metrics: Optional[MetricsWriter] = None
    nonfinite_run: int = 0
    window_nonfinite: int = 0
    totals: dict = field(default_factory=dict)
    meters: dict = field(default_factory=dict)


# Sums that make up an epoch's figures; a mid-epoch checkpoint carries them so a resumed epoch reports the whole.
EPOCH_TOTALS = ("loss_sum", "loss_count", "grad_norm_sum", "grad_norm_count", "skipped_steps", "images", "seconds")


def _grad_norm(parameters: list[torch.Tensor], clip: float) -> torch.Tensor:
    """The global gradient norm, after clipping it to `clip` when `clip` > 0."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, clip)
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else \
        torch.zeros(())


def _agree_on_step(ctx: TrainContext) -> tuple[bool, int]:
    """One collective per optimizer step: whether every rank's losses of the window were finite, and the signal
    any rank received (0 when none), the same on every rank."""
    if not ctx.rt.is_distributed:
        return ctx.window_nonfinite == 0, ctx.stop_signal()
    flags = torch.tensor([float(ctx.window_nonfinite), float(ctx.stop_signal())], device=ctx.rt.device)
    bad, signum = ctx.rt.all_reduce_sum(flags).tolist()
    return bad == 0, int(signum and (ctx.stop_signal() or signal.SIGTERM))


def _optimizer_step(ctx: TrainContext, loss_finite: bool) -> tuple[float, bool]:
    """Unscale, clip and step, then zero the gradients; skip the update when a loss or gradient is not finite.

    Returns the gradient norm and whether the weights were updated.
    """
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    ctx.scaler.unscale_(ctx.optimizer)
    norm = float(_grad_norm(params, ctx.clip_grad))
    stepped = loss_finite and math.isfinite(norm)
    if stepped:
        ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.optimizer.zero_grad(set_to_none=True)
    return norm, stepped


def _log_progress(ctx: TrainContext, epoch: int, step: int, total: int, done: int, started: float) -> None:
    """One progress line (with ETA from the `done` batches of this run), and the same figures to TensorBoard."""
    meters = ctx.meters
    eta = (time.time() - started) / done * (total - step - 1)
    lr = max(group["lr"] for group in ctx.optimizer.param_groups)  # the head's, under layer decay
    wd = max(group["weight_decay"] for group in ctx.optimizer.param_groups)
    loss_avg = ctx.totals["loss_sum"] / max(ctx.totals["loss_count"], 1)
    ctx.logger.info(
        f"train {epoch} [{step + 1}/{total}] eta {eta:.0f}s lr {lr:.3e} wd {wd:.4f} "
        f"loss {meters['loss']:.4f} ({loss_avg:.4f}) grad_norm {meters['grad_norm']:.4f} "
        f"loss_scale {meters['loss_scale']:.0f} img/s {meters['img_s']:.1f} "
        f"mem {ctx.rt.max_memory_mb():.0f}MB"
    )
    if ctx.metrics is not None:
        values = {"lr": lr, **meters}
        ctx.metrics.scalars(values, epoch * total + step + 1, "train")


def _end_of_window(ctx: TrainContext, epoch: int, index: int, total: int) -> Optional[int]:
    """The optimizer step that closes an accumulation window. Returns the stop signal agreed by all ranks."""
    loss_finite, signum = _agree_on_step(ctx)
    ctx.window_nonfinite = 0
    norm, stepped = _optimizer_step(ctx, loss_finite)
    if stepped:
        ctx.nonfinite_run = 0
        if ctx.ema is not None:
            ctx.ema.update()
        ctx.totals["grad_norm_sum"] += norm
        ctx.totals["grad_norm_count"] += 1
    else:
        ctx.totals["skipped_steps"] += 1
        _track_nonfinite(ctx, loss_finite, epoch, index)
    # The rate of the next update: update k runs at schedule(k), as in timm's train.py (the reference sets
    # schedule(k - 1), one update late, so its warm-up reaches BASE_LR one update after the warm-up ends).
    ctx.scheduler.step_update((epoch * total + index + 1) // ctx.accumulation_steps)
    if ctx.metrics is not None:  # every step's lr, for plots that show the warm-up
        ctx.metrics.scalars({"lr_step": max(g["lr"] for g in ctx.optimizer.param_groups)}, epoch * total + index + 1)
    ctx.meters["grad_norm"] = norm
    ctx.meters["loss_scale"] = float(ctx.scaler.get_scale()) if ctx.scaler.is_enabled() else 1.0
    return signum


def _train_batch(ctx: TrainContext, batch: tuple, index: int, epoch: int, total: int) -> tuple[float, int, bool]:
    """Forward and backward one batch; step the optimizer at the end of each accumulation window.

    Returns the loss, the batch size and whether this batch closed a window.
    """
    # targets: class labels, or SimMIM's masks
    images, targets = batch[0].to(ctx.rt.device, non_blocking=True), batch[1].to(ctx.rt.device, non_blocking=True)
    if ctx.mixup_fn is not None:
        if len(images) % 2:  # mixup pairs images; a batch that lost an undecodable image drops one more
            images, targets = images[:-1], targets[:-1]
        images, targets = ctx.mixup_fn(images, targets)
    is_step = (index + 1) % ctx.accumulation_steps == 0
    sync = is_step or not hasattr(ctx.model, "no_sync")
    with (contextlib.nullcontext() if sync else ctx.model.no_sync()), ctx.rt.autocast():
        loss = ctx.model(images, targets) if ctx.criterion is None else ctx.criterion(ctx.model(images), targets)
    ctx.scaler.scale(loss / ctx.accumulation_steps).backward()
    value = loss.item()
    ctx.window_nonfinite += not math.isfinite(value)
    return value, images.shape[0], is_step


def train_one_epoch(ctx: TrainContext, loader: Iterable, epoch: int, start_batch: int = 0,
                    totals: Optional[dict] = None) -> dict:
    """One pass over `loader`, which yields the epoch's batches from `start_batch` on (a resumed epoch).

    `totals` are the running sums of the batches before `start_batch` (from a mid-epoch checkpoint).
    After every optimizer step `ctx.step_hook(epoch, batches_done, signal)` runs (mid-epoch
    checkpoints, preemption). Returns the mean loss and grad norm over the finite steps, the last
    lr, the skipped (non-finite) steps and images/s.
    """
    ctx.model.train()
    ctx.meters = {"loss": 0.0, "grad_norm": 0.0, "loss_scale": 1.0, "img_s": 0.0}
    ctx.totals = {key: 0 for key in EPOCH_TOTALS} | (totals or {})
    ctx.window_nonfinite = 0
    total = start_batch + len(loader)
    started = time.time()
    ctx.optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(loader, start=start_batch):
        if batch is None:
            continue
        tick = time.time()
        loss, size, closes_window = _train_batch(ctx, batch, index, epoch, total)
        signum = _end_of_window(ctx, epoch, index, total) if closes_window else None
        ctx.rt.synchronize()
        elapsed = time.time() - tick
        ctx.totals["images"] += size
        ctx.totals["seconds"] += elapsed
        if math.isfinite(loss):
            ctx.totals["loss_sum"] += loss * size
            ctx.totals["loss_count"] += size
        ctx.meters.update(loss=loss, img_s=size / max(elapsed, 1e-9))
        if index % ctx.print_freq == 0 or index == total - 1:
            _log_progress(ctx, epoch, index, total, index - start_batch + 1, started)
        if signum is not None and ctx.step_hook is not None:
            ctx.step_hook(epoch, index + 1, signum)
    return epoch_figures(ctx)


def epoch_figures(ctx: TrainContext) -> dict:
    """The epoch's training figures from its running sums."""
    sums = ctx.totals
    return {
        "train_loss": sums["loss_sum"] / max(sums["loss_count"], 1),
        "grad_norm": sums["grad_norm_sum"] / max(sums["grad_norm_count"], 1),
        "lr": max(group["lr"] for group in ctx.optimizer.param_groups),
        "skipped_steps": float(sums["skipped_steps"]),
        "train_img_s": sums["images"] / max(sums["seconds"], 1e-9),
        "train_s": float(sums["seconds"]),
    }


def _track_nonfinite(ctx: TrainContext, loss_finite: bool, epoch: int, index: int) -> None:
    """Log a skipped step; stop training after `max_nonfinite` non-finite steps in a row.

    An fp16 gradient overflow with finite losses is the loss scaler's routine skip and does not count.
    """
    if loss_finite and ctx.scaler.is_enabled():
        ctx.logger.info(f"epoch {epoch} step {index}: fp16 gradient overflow, update skipped, loss scale lowered")
        return
    ctx.nonfinite_run += 1
    what = "loss" if not loss_finite else "gradient"
    ctx.logger.warning(f"epoch {epoch} step {index}: non-finite {what}, update skipped ({ctx.nonfinite_run} in a row)")
    if ctx.nonfinite_run >= ctx.max_nonfinite:
        raise DivergedError(
            f"loss was non-finite for {ctx.nonfinite_run} steps in a row up to epoch {epoch} step {index}; "
            "lower TRAIN.BASE_LR or raise TRAIN.CLIP_GRAD and resume from the last checkpoint"
        )


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, rt: Runtime, tally: Optional[ClassTally] = None,
             logger: Optional[logging.Logger] = None, print_freq: int = 0) -> dict:
    """Top-1, top-5 (for more than 5 classes) and mean cross-entropy over every image of the loader's dataset
    on all ranks; per-class counts into `tally` when given; a progress line every `print_freq` batches.

    Counts and sums (not per-rank means) are added over ranks, so any number of processes gives
    the same figures as one.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=rt.device)  # correct@1, correct@5, loss sum, count
    num_classes, started = 0, time.time()
    for step, batch in enumerate(loader):
        if batch is None:  # every image of the batch was undecodable and skipped (DATA.DECODE_ERRORS skip)
            continue
        images, targets = batch
        images, targets = images.to(rt.device, non_blocking=True), targets.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(images)
        logits = logits.float()
        num_classes = logits.shape[1]
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
        top = logits.topk(min(5, num_classes), dim=1).indices
        hits = top == targets[:, None]
        totals += torch.stack([hits[:, :1].sum(), hits.sum(), loss, torch.tensor(len(targets), device=rt.device)]
                              ).to(torch.float64)
        if tally is not None:
            tally.add(targets, top[:, 0])
        if logger is not None and print_freq and (step + 1) % print_freq == 0 and step + 1 < len(loader):
            logger.info(f"val [{step + 1}/{len(loader)}] {time.time() - started:.0f}s")
    correct1, correct5, loss_sum, count = rt.all_reduce_sum(totals).tolist()
    if tally is not None:
        tally.reduce(rt)
    count = max(count, 1.0)
    result = {"top1": 100.0 * correct1 / count, "loss": loss_sum / count, "count": count}
    if num_classes == 0 or num_classes > 5:  # top-5 of five classes or fewer is always 100%
        result["top5"] = 100.0 * correct5 / count
    return result


def describe(stats: dict, digits: int = 2) -> str:
    """`top-1 X% top-5 Y% loss Z` for a validation result (top-5 only where it was measured)."""
    top5 = f" top-5 {stats['top5']:.{digits}f}%" if "top5" in stats else ""
    return f"top-1 {stats['top1']:.{digits}f}%{top5} loss {stats['loss']:.4f}"


@torch.no_grad()
def throughput(model: nn.Module, images: torch.Tensor, rt: Runtime, warmup: int = 10, iterations: int = 30) -> dict:
    """Images per second of inference on one batch, after `warmup` untimed passes."""
    model.eval()
    images = images.to(rt.device)
    with rt.autocast():
        for _ in range(warmup):
            model(images)
        rt.synchronize()
        started = time.perf_counter()
        for _ in range(iterations):
            model(images)
        rt.synchronize()
    elapsed = time.perf_counter() - started
    batch = images.shape[0]
    return {"batch_size": float(batch), "img_s": batch * iterations / elapsed,
            "ms_per_batch": 1000.0 * elapsed / iterations, "peak_memory_mb": rt.max_memory_mb()}
