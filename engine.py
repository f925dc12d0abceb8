"""Training, evaluation and throughput loops over explicit objects; each returns a dict of floats."""

import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn

from logger import MetricsWriter
from runtime import Runtime
from utils import AverageMeter, UserError


class DivergedError(UserError):
    """The loss stayed non-finite for too many steps in a row."""


class ModelEma:
    """Exponential moving average of a model's floating-point weights, kept as a model to evaluate.

    Integer buffers (relative_position_index) are left as they are: averaging an index is meaningless.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.source = model
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        pairs = [(ema, new) for ema, new in zip(self.module.state_dict().values(), self.source.state_dict().values())
                 if ema.dtype.is_floating_point]
        torch._foreach_lerp_([ema for ema, _ in pairs], [new for _, new in pairs], 1.0 - self.decay)


@dataclass
class TrainContext:
    """Everything a training epoch uses besides the data."""

    model: nn.Module
    criterion: nn.Module
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
    step_hook: Optional[Callable[[int, int], None]] = None
    ema: Optional[ModelEma] = None
    metrics: Optional[MetricsWriter] = None
    nonfinite_run: int = 0
    skipped_steps: int = 0
    meters: dict = field(default_factory=dict)


def _grad_norm(parameters: list[torch.Tensor], clip: float) -> torch.Tensor:
    """The global gradient norm, after clipping it to `clip` when `clip` > 0."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, clip)
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else \
        torch.zeros(())


def _is_finite_everywhere(loss: torch.Tensor, rt: Runtime) -> bool:
    """True when the loss is finite on every rank, so all ranks skip or step together."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
    return rt.all_reduce_sum(bad).item() == 0


def _optimizer_step(ctx: TrainContext, finite: bool) -> tuple[float, float]:
    """Unscale, clip, step and zero the gradients; skip the update when the loss was not finite."""
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    ctx.scaler.unscale_(ctx.optimizer)
    norm = _grad_norm(params, ctx.clip_grad)
    if finite:
        ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.optimizer.zero_grad(set_to_none=True)
    return float(norm), float(ctx.scaler.get_scale()) if ctx.scaler.is_enabled() else 1.0


def _log_progress(ctx: TrainContext, epoch: int, step: int, total: int, done: int, started: float) -> None:
    """One progress line (with ETA from the `done` batches of this run), and the same figures to TensorBoard."""
    meters = ctx.meters
    eta = (time.time() - started) / done * (total - step - 1)
    lr = ctx.optimizer.param_groups[0]["lr"]
    wd = ctx.optimizer.param_groups[0]["weight_decay"]
    ctx.logger.info(
        f"train {epoch} [{step + 1}/{total}] eta {eta:.0f}s lr {lr:.3e} wd {wd:.4f} "
        f"loss {meters['loss'].val:.4f} ({meters['loss'].avg:.4f}) grad_norm {meters['grad_norm'].val:.4f} "
        f"loss_scale {meters['loss_scale'].val:.0f} img/s {meters['img_s'].val:.1f} "
        f"mem {ctx.rt.max_memory_mb():.0f}MB"
    )
    if ctx.metrics is not None:
        values = {"lr": lr, "loss": meters["loss"].val, "grad_norm": meters["grad_norm"].val,
                  "loss_scale": meters["loss_scale"].val, "img_s": meters["img_s"].val}
        ctx.metrics.scalars(values, epoch * total + step + 1, "train")


def _train_batch(ctx: TrainContext, batch: tuple, index: int, epoch: int, total: int) -> tuple[float, int, bool]:
    """Forward and backward one batch; step the optimizer at the end of each accumulation window.

    Returns the loss, the batch size and whether the optimizer stepped.
    """
    images, targets = batch[0].to(ctx.rt.device, non_blocking=True), batch[1].to(ctx.rt.device, non_blocking=True)
    if ctx.mixup_fn is not None:
        if len(images) % 2:  # mixup pairs images; a batch that lost an undecodable image drops one more
            images, targets = images[:-1], targets[:-1]
        images, targets = ctx.mixup_fn(images, targets)
    is_step = (index + 1) % ctx.accumulation_steps == 0
    sync = is_step or not hasattr(ctx.model, "no_sync")
    with (contextlib.nullcontext() if sync else ctx.model.no_sync()), ctx.rt.autocast():
        loss = ctx.criterion(ctx.model(images), targets)
    ctx.scaler.scale(loss / ctx.accumulation_steps).backward()
    if is_step:
        finite = _is_finite_everywhere(loss.detach(), ctx.rt)
        norm, scale = _optimizer_step(ctx, finite)
        ctx.skipped_steps += _track_nonfinite(ctx, finite, epoch, index)
        if finite and ctx.ema is not None:
            ctx.ema.update()
        ctx.scheduler.step_update((epoch * total + index) // ctx.accumulation_steps)
        ctx.meters["grad_norm"].update(norm)
        ctx.meters["loss_scale"].update(scale)
    return loss.item(), images.shape[0], is_step


def train_one_epoch(ctx: TrainContext, loader: Iterable, epoch: int, start_batch: int = 0) -> dict:
    """One pass over `loader`, which yields the epoch's batches from `start_batch` on (a resumed epoch).

    After every optimizer step `ctx.step_hook(epoch, batches_done)` runs (mid-epoch checkpoints,
    preemption). Returns the mean loss, mean grad norm, last lr, skipped (non-finite) steps and images/s.
    """
    ctx.model.train()
    ctx.meters = {k: AverageMeter() for k in ("loss", "grad_norm", "loss_scale", "img_s")}
    ctx.skipped_steps = 0
    total = start_batch + len(loader)
    images_seen, started = 0, time.time()
    ctx.optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(loader, start=start_batch):
        if batch is None:
            continue
        tick = time.time()
        loss, size, stepped = _train_batch(ctx, batch, index, epoch, total)
        ctx.rt.synchronize()
        images_seen += size
        ctx.meters["loss"].update(loss, size)
        ctx.meters["img_s"].update(size / max(time.time() - tick, 1e-9))
        if index % ctx.print_freq == 0 or index == total - 1:
            _log_progress(ctx, epoch, index, total, index - start_batch + 1, started)
        if stepped and ctx.step_hook is not None:
            ctx.step_hook(epoch, index + 1)
    return {
        "train_loss": ctx.meters["loss"].avg,
        "grad_norm": ctx.meters["grad_norm"].avg,
        "lr": ctx.optimizer.param_groups[0]["lr"],
        "skipped_steps": float(ctx.skipped_steps),
        "train_img_s": images_seen / max(time.time() - started, 1e-9),
    }


def _track_nonfinite(ctx: TrainContext, finite: bool, epoch: int, index: int) -> int:
    """Count a skipped step; stop training after `max_nonfinite` in a row."""
    if finite:
        ctx.nonfinite_run = 0
        return 0
    ctx.nonfinite_run += 1
    ctx.logger.warning(f"epoch {epoch} step {index}: non-finite loss, update skipped ({ctx.nonfinite_run} in a row)")
    if ctx.nonfinite_run >= ctx.max_nonfinite:
        raise DivergedError(
            f"loss was non-finite for {ctx.nonfinite_run} steps in a row up to epoch {epoch} step {index}; "
            "lower TRAIN.BASE_LR or raise TRAIN.CLIP_GRAD and resume from the last checkpoint"
        )
    return 1


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, rt: Runtime) -> dict:
    """Top-1, top-5 and mean cross-entropy over every image of the loader's dataset on all ranks.

    Counts and sums (not per-rank means) are added over ranks, so any number of processes gives
    the same figures as one.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=rt.device)  # correct@1, correct@5, loss sum, count
    for images, targets in loader:
        images, targets = images.to(rt.device, non_blocking=True), targets.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(images)
        logits = logits.float()
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        totals += torch.stack([hits[:, :1].sum(), hits.sum(), loss, torch.tensor(len(targets), device=rt.device)]
                              ).to(torch.float64)
    correct1, correct5, loss_sum, count = rt.all_reduce_sum(totals).tolist()
    count = max(count, 1.0)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "count": count}


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
