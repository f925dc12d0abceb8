"""Training, evaluation and throughput loops over explicit objects; each returns a dict of floats."""

import contextlib
import copy
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from timm.scheduler.scheduler import Scheduler
from torch import nn

from jobs.results import ClassTally
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
    def update(self, stepped: Optional[torch.Tensor] = None) -> None:
        """Move towards the model by 1 - decay; by nothing where `stepped` (a device 0/1 flag) is 0."""
        source = self.source.state_dict()
        pairs = [(ema, source[name]) for name, ema in self.module.state_dict().items()
                 if ema.dtype.is_floating_point and name not in self.frozen]
        averages, news = [ema for ema, _ in pairs], [new for _, new in pairs]
        if stepped is None:
            torch._foreach_lerp_(averages, news, 1.0 - self.decay)
            return
        moves = torch._foreach_sub(news, averages)
        torch._foreach_mul_(moves, (stepped * (1.0 - self.decay)).to(averages[0].dtype))
        torch._foreach_add_(averages, moves)


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
    # An all-zero image and target (label or SimMIM mask) for a batch that lost every image (see `_train_batch`)
    blank_batch: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    totals: dict = field(default_factory=dict)
    meters: dict = field(default_factory=dict)
    device_sums: Optional["DeviceSums"] = None


# Sums that make up an epoch's figures; a mid-epoch checkpoint carries them so a resumed epoch reports the whole.
EPOCH_TOTALS = ("loss_sum", "loss_count", "grad_norm_sum", "grad_norm_count", "skipped_steps", "images", "seconds")
HostCopy = tuple[torch.Tensor, Optional[torch.Event]]  # a host tensor, and the event after which it holds its value


class DeviceSums:
    """What the steps since the last log line add up to, kept on the device so those steps never wait for it.

    `flush` reads it once (a logging step, a checkpoint, the epoch's end). It also carries the current window's
    non-finite flag and image count, the run of non-finite updates in a row with the first step at which it
    reached the limit, and (DDP) the stop signals agreed at the last two window ends, on their way to the host.
    """

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, count, norm, norm count, skipped
        self.window_nonfinite = torch.zeros((), device=device)
        self.window_images = 0
        self.run = torch.zeros((), dtype=torch.int64, device=device)
        self.diverged_at = torch.full((), -1, dtype=torch.int64, device=device)
        self.last = torch.zeros(2, device=device)  # the last batch's loss, the last update's gradient norm
        self.signals: tuple[Optional[HostCopy], Optional[HostCopy]] = (None, None)  # the previous window's, the last
        self.images, self.since = 0, time.time()


def _grad_norm(parameters: list[torch.Tensor], clip: float) -> torch.Tensor:
    """The global gradient norm, after clipping it to `clip` when `clip` > 0."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, clip)
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else \
        torch.zeros((), device=parameters[0].device if parameters else None)


def _copy_to_host(flag: torch.Tensor) -> HostCopy:
    """Start copying a device scalar to the host, not waiting for it; a CPU one is its own (gloo has finished)."""
    if flag.device.type == "cpu":
        return flag, None
    event = torch.Event(flag.device)
    host = flag.to("cpu", non_blocking=True)  # into pinned memory, written when the stream reaches the copy
    event.record()
    return host, event


def _agree_on_window(ctx: TrainContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether any rank's losses of the window were non-finite, and whether no rank had an image in it, agreed by one
    small collective that nobody waits for; the stop signal travels in it, read one window later (`_agreed_stop`)."""
    sums = ctx.device_sums
    flags = torch.stack([sums.window_nonfinite, sums.window_nonfinite.new_full((), sums.window_images),
                         sums.window_nonfinite.new_full((), ctx.stop_signal())])
    sums.window_nonfinite, sums.window_images = torch.zeros_like(sums.window_nonfinite), 0
    if ctx.rt.is_distributed:
        flags = ctx.rt.all_reduce_sum(flags)
        sums.signals = (sums.signals[1], _copy_to_host(flags[2]))
    return flags[0] > 0, flags[1] == 0


def _agreed_stop(ctx: TrainContext, window: int) -> int:
    """The stop signal to act on (0: none). In a world of one, this process's own; under DDP, the one the ranks
    agreed on at the end of the previous (`window` 0) or last (1) window, as this process's own signal or SIGTERM:
    every rank acts at the same step. Reading it one window late waits for its copy alone, not the step queued."""
    if not ctx.rt.is_distributed:
        return ctx.stop_signal()
    copy = ctx.device_sums.signals[window]
    if copy is None:
        return 0
    host, event = copy
    if event is not None:
        event.synchronize()
    return int(host.item() and (ctx.stop_signal() or signal.SIGTERM))


def _zero_momentum_before_first_step(optimizer: torch.optim.SGD) -> None:
    """Give fused SGD zero momentum buffers before its first step: a first step it skips on the device would
    otherwise leave them uninitialised; zero gives the same first update (momentum x 0 + gradient)."""
    for group in optimizer.param_groups:
        if group["momentum"]:
            for param in group["params"]:
                state = optimizer.state[param]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def _apply_update(ctx: TrainContext, skip: torch.Tensor) -> None:
    """Step the optimizer (its gradients unscaled) unless `skip` (a device flag). The fused optimizers skip on the
    device; foreach optimizers cannot, and read the flag (the one host synchronisation left on their path). The
    fp16 loss scaler does not step: it skips on its overflow check of the gradients alone, so a window whose loss
    alone was non-finite changed the weights while counted as skipped. `skip` covers that check (an inf or nan
    gradient makes the norm non-finite), and `scaler.update()` still lowers the scale on an overflow."""
    optimizer = ctx.optimizer
    if isinstance(optimizer, torch.optim.SGD) and optimizer.defaults.get("fused"):
        _zero_momentum_before_first_step(optimizer)
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skip):
        optimizer.step()
    ctx.scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _end_of_window(ctx: TrainContext, index: int) -> None:
    """The optimizer step that closes an accumulation window, skipped when a loss or gradient is not finite or no
    rank had an image in it (which is neither counted as skipped nor as a step of a non-finite run); its
    accounting stays on the device."""
    sums = ctx.device_sums
    loss_nonfinite, empty = _agree_on_window(ctx)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    ctx.scaler.unscale_(ctx.optimizer)
    norm = _grad_norm(params, ctx.clip_grad).float()
    skip = loss_nonfinite | empty | ~torch.isfinite(norm)
    _apply_update(ctx, skip)
    stepped = (~skip).double()
    if ctx.ema is not None:
        ctx.ema.update(stepped)
    sums.sums[2:] += torch.stack([torch.where(skip, 0.0, norm.double()), stepped, (skip & ~empty).double()])
    sums.last[1] = norm
    # An fp16 overflow with finite losses is the loss scaler's routine skip and does not count towards divergence.
    counts = skip & loss_nonfinite if ctx.scaler.is_enabled() else skip
    sums.run = torch.where(empty, sums.run, (sums.run + 1) * counts)
    sums.diverged_at = torch.where((sums.run >= ctx.max_nonfinite) & (sums.diverged_at < 0), index,
                                   sums.diverged_at)


def flush(ctx: TrainContext, epoch: int) -> None:
    """Add the device sums since the last flush to `ctx.totals` and the meters (one host synchronisation), and stop
    training when the non-finite run reached the limit."""
    sums = ctx.device_sums
    if sums is None:
        return
    ctx.rt.synchronize()
    now = time.time()
    values = torch.cat([sums.sums, sums.last.double(), torch.stack([sums.run, sums.diverged_at]).double()]).tolist()
    loss_sum, loss_count, norm_sum, norm_count, skipped, last_loss, last_norm, run, diverged_at = values
    sums.sums.zero_()
    for key, value in zip(("loss_sum", "loss_count", "grad_norm_sum", "grad_norm_count", "skipped_steps"),
                          (loss_sum, loss_count, norm_sum, norm_count, skipped)):
        ctx.totals[key] += value
    ctx.totals["images"] += sums.images
    ctx.totals["seconds"] += now - sums.since
    ctx.meters.update(loss=last_loss, grad_norm=last_norm, img_s=sums.images / max(now - sums.since, 1e-9),
                      loss_scale=float(ctx.scaler.get_scale()) if ctx.scaler.is_enabled() else 1.0)
    sums.images, sums.since = 0, now
    if skipped:
        what = "fp16 gradient overflow (loss scale lowered)" if ctx.scaler.is_enabled() and not run else \
            "a non-finite loss or gradient"
        ctx.logger.warning(f"epoch {epoch}: {skipped:.0f} update(s) skipped since the last line: {what}")
    if diverged_at >= 0:
        raise DivergedError(
            f"loss was non-finite for {ctx.max_nonfinite} steps in a row up to epoch {epoch} step {diverged_at:.0f}; "
            "lower TRAIN.BASE_LR or raise TRAIN.CLIP_GRAD and resume from the last checkpoint"
        )


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


def _train_batch(ctx: TrainContext, batch: Optional[tuple], index: int) -> bool:
    """Forward and backward one batch, its loss added to the device sums. Returns whether it closes a window.

    A batch that lost every image to DATA.DECODE_ERRORS skip (None) still goes forward and backward, as
    `ctx.blank_batch` with its loss times zero: every rank must join each step's collectives (DDP's gradient
    all-reduce, the window's agreement), so this one contributes a zero gradient and no loss or image.
    """
    is_step = (index + 1) % ctx.accumulation_steps == 0
    sync = is_step or not hasattr(ctx.model, "no_sync")
    if batch is None:
        assert ctx.blank_batch is not None, "a batch without images needs TrainContext.blank_batch"
        images, targets = ctx.blank_batch  # the output's sum stands in for a criterion it may not fit (Mixup's)
        with (contextlib.nullcontext() if sync else ctx.model.no_sync()), ctx.rt.autocast():
            output = ctx.model(images, targets) if ctx.criterion is None else ctx.model(images)
        (output.float().sum() * 0.0).backward()
        return is_step
    # targets: class labels, or SimMIM's masks
    images, targets = batch[0].to(ctx.rt.device, non_blocking=True), batch[1].to(ctx.rt.device, non_blocking=True)
    if ctx.mixup_fn is not None:
        if len(images) % 2:  # mixup pairs images; a batch that lost an undecodable image drops one more
            images, targets = images[:-1], targets[:-1]
        images, targets = ctx.mixup_fn(images, targets)
    with (contextlib.nullcontext() if sync else ctx.model.no_sync()), ctx.rt.autocast():
        loss = ctx.model(images, targets) if ctx.criterion is None else ctx.criterion(ctx.model(images), targets)
    ctx.scaler.scale(loss / ctx.accumulation_steps).backward()
    sums, value, size = ctx.device_sums, loss.detach().float(), images.shape[0]
    finite = torch.isfinite(value)
    sums.sums[:2] += torch.stack([torch.where(finite, value * size, 0.0), finite * float(size)]).double()
    sums.window_nonfinite = sums.window_nonfinite + ~finite
    sums.last[0] = value
    sums.images += size
    sums.window_images += size
    return is_step


def train_one_epoch(ctx: TrainContext, loader: Iterable, epoch: int, start_batch: int = 0,
                    totals: Optional[dict] = None) -> dict:
    """One pass over `loader`, which yields the epoch's batches from `start_batch` on (a resumed epoch).

    `totals` are the running sums of the batches before `start_batch` (from a mid-epoch checkpoint).
    After every optimizer step `ctx.step_hook(epoch, batches_done, signal)` runs (mid-epoch checkpoints,
    preemption; under DDP with the signal agreed one step earlier), and once more after the epoch on a
    signal still to act on. Only logging steps (every `print_freq` batches) and the epoch's end wait for the
    device: the figures of the steps between stay there (`DeviceSums`), and so does the choice to skip a
    non-finite update. Returns the mean loss and grad norm over the finite steps, the last lr, the skipped
    (non-finite) steps and images/s.
    """
    ctx.model.train()
    ctx.meters = {"loss": 0.0, "grad_norm": 0.0, "loss_scale": 1.0, "img_s": 0.0}
    ctx.totals = {key: 0 for key in EPOCH_TOTALS} | (totals or {})
    ctx.device_sums = DeviceSums(ctx.rt.device)
    total = start_batch + len(loader)
    started, last_step = time.time(), 0
    ctx.optimizer.zero_grad(set_to_none=True)
    for index, batch in enumerate(loader, start=start_batch):
        closes_window = _train_batch(ctx, batch, index)
        if closes_window:
            _end_of_window(ctx, index)
            last_step = index + 1
            # The rate of the next update: update k runs at schedule(k), as in timm's train.py (the reference sets
            # schedule(k - 1), one update late, so its warm-up reaches BASE_LR one update after the warm-up ends).
            ctx.scheduler.step_update((epoch * total + index + 1) // ctx.accumulation_steps)
            if ctx.metrics is not None:  # every step's lr, for plots that show the warm-up
                ctx.metrics.scalars({"lr_step": max(g["lr"] for g in ctx.optimizer.param_groups)},
                                    epoch * total + index + 1)
        if index % ctx.print_freq == 0 or index == total - 1:
            flush(ctx, epoch)
            _log_progress(ctx, epoch, index, total, index - start_batch + 1, started)
        if closes_window and ctx.step_hook is not None:
            ctx.step_hook(epoch, last_step, _agreed_stop(ctx, 0))
    flush(ctx, epoch)
    if ctx.step_hook is not None and last_step and (signum := _agreed_stop(ctx, 1)):  # after the last step's hook
        ctx.step_hook(epoch, last_step, signum)
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


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, rt: Runtime, tally: Optional[ClassTally] = None,
             logger: Optional[logging.Logger] = None, print_freq: int = 0) -> dict:
    """Top-1, top-5 (for more than 5 classes) and mean cross-entropy over every image of the loader's dataset
    on all ranks; per-class counts into `tally` when given; a progress line every `print_freq` batches.

    Counts and sums (not per-rank means) are added over ranks, so any number of processes gives
    the same figures as one. They stay on the device, read once at the end: no batch waits for the device.
    """
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=rt.device)  # correct@1, correct@5, loss sum
    num_classes, seen, started = 0, 0, time.time()
    for step, batch in enumerate(loader):
        if batch is None:  # every image of the batch was undecodable and skipped (DATA.DECODE_ERRORS skip)
            continue
        images, targets = batch
        images, targets = images.to(rt.device, non_blocking=True), targets.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(images)
        logits = logits.float()
        num_classes, seen = logits.shape[1], seen + len(targets)  # known on the host, never read back
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
        top = logits.topk(min(5, num_classes), dim=1).indices
        hits = top == targets[:, None]
        totals += torch.stack([hits[:, :1].sum(), hits.sum(), loss]).to(torch.float64)
        if tally is not None:
            tally.add(targets, top[:, 0])
        if logger is not None and print_freq and (step + 1) % print_freq == 0 and step + 1 < len(loader):
            logger.info(f"val [{step + 1}/{len(loader)}] {time.time() - started:.0f}s")
    totals = torch.cat([totals, totals.new_full((1,), seen)])
    correct1, correct5, loss_sum, count = rt.all_reduce_sum(totals).tolist()
    if tally is not None:
        tally.reduce(rt)
    count = max(count, 1.0)
    result = {"top1": 100.0 * correct1 / count, "loss": loss_sum / count, "count": count}
    if num_classes == 0 or num_classes > 5:  # top-5 of five classes or fewer is always 100%
        result["top5"] = 100.0 * correct5 / count
    return result


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
