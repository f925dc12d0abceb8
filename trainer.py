"""The three jobs of main.py: train (with resume and preemption), evaluate, measure throughput.

Each builds data, model, optimizer and schedule from the config and the runtime, then hands
plain objects to the loops in engine.py.
"""

import logging
import os
import signal
import time

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from yacs.config import CfgNode

import engine
from checkpoint import load_pretrained, resume_training_state, save_training_state, training_state
from data import LoaderBundle, build_loader
from logger import MetricsWriter
from lr_scheduler import build_scheduler, scale_lrs
from models import build_model
from models.summary import summarize
from optimizer import build_optimizer
from runtime import Runtime, wrap_model
from utils import UserError, find_resume_checkpoint, prune_checkpoints, save_text


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; rerunning the command resumes."""

    def __init__(self, signum: int, path: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}; rerun the same command to resume")
        self.signum = signum


class StopFlag:
    """Records SIGTERM/SIGINT instead of dying, so training can save at the next optimizer step."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def on_any_rank(self, rt: Runtime) -> int:
        """The signal number when any rank received one (0 otherwise), the same on every rank."""
        if not rt.is_distributed:
            return self.signum
        raised = rt.all_reduce_sum(torch.tensor([float(self.signum)], device=rt.device))
        return int(raised.item() and (self.signum or signal.SIGTERM))


def build_criterion(config: CfgNode, has_mixup: bool) -> nn.Module:
    if has_mixup:
        return SoftTargetCrossEntropy()
    if config.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    return nn.CrossEntropyLoss()


def _with_num_classes(config: CfgNode, num_classes: int) -> CfgNode:
    config = config.clone()
    config.defrost()
    config.MODEL.NUM_CLASSES = num_classes
    config.freeze()
    return config


def _build_model(config: CfgNode, rt: Runtime, logger: logging.Logger) -> tuple[nn.Module, nn.Module]:
    model = build_model(config)
    logger.info("model " + summarize(model, config.MODEL.NAME))
    return wrap_model(model, rt, config.COMPILE)


def run_throughput(config: CfgNode, rt: Runtime, logger: logging.Logger) -> dict:
    """Inference images/s on one batch: from the validation set when a dataset is given, else synthetic."""
    model = build_model(config).to(rt.device)
    logger.info("model " + summarize(model, config.MODEL.NAME))
    if config.DATA.DATA_PATH or config.DATA.DATASET in ("digits", "fake"):
        images = next(iter(build_loader(config, rt, logger).loader_val))[0]
    else:
        images = torch.randn(config.DATA.BATCH_SIZE, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    result = engine.throughput(torch.compile(model) if config.COMPILE else model, images, rt)
    logger.info(f"throughput: {rt.describe()}, torch {torch.__version__}, compile {config.COMPILE}, "
                f"batch {int(result['batch_size'])}, {result['img_s']:.1f} img/s, "
                f"{result['ms_per_batch']:.1f} ms/batch, peak memory {result['peak_memory_mb']:.0f} MB")
    return result


def run_eval(config: CfgNode, rt: Runtime, logger: logging.Logger) -> dict:
    if not (config.MODEL.RESUME or config.MODEL.PRETRAINED):
        raise UserError("--eval needs weights: pass --resume CKPT or --pretrained CKPT")
    data = build_loader(config, rt, logger)
    config = _with_num_classes(config, data.num_classes)
    _, bare = _build_model(config, rt, logger)
    if config.MODEL.RESUME:
        resume_training_state(config.MODEL.RESUME, bare, None, None, None)
    else:
        load_pretrained(bare, config.MODEL.PRETRAINED, logger)
    result = engine.validate(bare, data.loader_val, rt)
    logger.info(f"eval on {int(result['count'])} images: top-1 {result['top1']:.3f}% top-5 {result['top5']:.3f}% "
                f"loss {result['loss']:.4f}")
    return result


def _make_context(config: CfgNode, rt: Runtime, data: LoaderBundle, model: nn.Module, bare: nn.Module,
                  logger: logging.Logger) -> engine.TrainContext:
    steps_per_epoch = len(data.loader_train) // config.TRAIN.ACCUMULATION_STEPS
    lrs = scale_lrs(config, rt.world_size)
    logger.info(f"lr scaled to the global batch {config.DATA.BATCH_SIZE * rt.world_size} x "
                f"{config.TRAIN.ACCUMULATION_STEPS} accumulation: base {lrs.base:.3e}, warm-up {lrs.warmup:.3e}, "
                f"min {lrs.min:.3e}")
    optimizer = build_optimizer(config, bare, lrs.base, fused=rt.device.type == "cuda")
    return engine.TrainContext(
        model=model, criterion=build_criterion(config, data.mixup_fn is not None), optimizer=optimizer,
        scheduler=build_scheduler(config, optimizer, steps_per_epoch, lrs), scaler=rt.make_scaler(), rt=rt,
        logger=logger, mixup_fn=data.mixup_fn, clip_grad=config.TRAIN.CLIP_GRAD,
        accumulation_steps=config.TRAIN.ACCUMULATION_STEPS, print_freq=config.PRINT_FREQ,
        max_nonfinite=config.TRAIN.MAX_NONFINITE,
    )


class Training:
    """One training run: resume point, checkpoints, preemption and the epoch loop."""

    def __init__(self, config: CfgNode, rt: Runtime, logger: logging.Logger) -> None:
        self.rt = rt
        self.logger = logger
        self.data = build_loader(config, rt, logger)
        self.config = _with_num_classes(config, self.data.num_classes)
        self.model, self.bare = _build_model(self.config, rt, logger)
        self.ctx = _make_context(self.config, rt, self.data, self.model, self.bare, logger)
        if self.config.TRAIN.EMA_DECAY > 0:
            self.ctx.ema = engine.ModelEma(self.bare, self.config.TRAIN.EMA_DECAY)
        self.max_accuracy = 0.0
        self.resumed_from = ""
        self.stop = StopFlag()

    def restore(self) -> tuple[int, int]:
        """Resume (explicit, else automatic from the output folder) or load pretrained weights.

        Returns the epoch to run and how many of its batches are already done.
        """
        config, path = self.config, self.config.MODEL.RESUME
        if not path and config.TRAIN.AUTO_RESUME:
            path = find_resume_checkpoint(config.OUTPUT, self.logger) or ""
            if path:
                self.logger.info(f"auto-resume from {path}")
        if path:
            progress = resume_training_state(path, self.bare, self.ctx.optimizer, self.ctx.scheduler, self.ctx.scaler,
                                             self.ctx.ema.module if self.ctx.ema else None)
            self.max_accuracy = progress.get("max_accuracy", 0.0)
            self.resumed_from = path
            epoch, batches = progress["resume_at"]
            self.logger.info(f"resumed from {path}: epoch {epoch}, {batches} batches done")
            return epoch, batches
        if config.MODEL.PRETRAINED:
            load_pretrained(self.bare, config.MODEL.PRETRAINED, self.logger)
        return config.TRAIN.START_EPOCH, 0

    def save(self, epoch: int, batches: int, is_best: bool = False) -> str:
        """Checkpoint on rank 0 at (epoch to run, batches of it done); every rank waits for it."""
        path = ""
        if self.rt.is_main:
            progress = {"epoch": epoch - 1, "resume_at": [epoch, batches], "max_accuracy": self.max_accuracy,
                        "class_names": self.data.class_names}
            state = training_state(self.bare, self.ctx.optimizer, self.ctx.scheduler, self.ctx.scaler, progress,
                                   self.config)
            if self.ctx.ema is not None:
                state["model_ema"] = self.ctx.ema.module.state_dict()
            path = save_training_state(state, self.config.OUTPUT, is_best)
            self.logger.info(f"saved {path}")
            prune_checkpoints(self.config.OUTPUT, self.config.TRAIN.KEEP_CHECKPOINTS, (path, self.resumed_from),
                              self.logger)
        self.rt.barrier()
        return path

    def after_step(self, epoch: int, batches: int) -> None:
        """Save inside the epoch every TRAIN.SAVE_STEPS steps, or on a signal and then stop with Interrupted."""
        signum = self.stop.on_any_rank(self.rt)
        every = self.config.TRAIN.SAVE_STEPS
        if signum or (every and (batches // self.config.TRAIN.ACCUMULATION_STEPS) % every == 0):
            path = self.save(epoch, batches)
            if signum:
                raise Interrupted(signum, path or "a checkpoint (rank 0)")

    def run(self) -> dict:
        start_epoch, start_batch = self.restore()
        if self.rt.is_main:
            save_text(self.config.dump(), os.path.join(self.config.OUTPUT, "config.yaml"))
        self.ctx.step_hook = self.after_step
        metrics = MetricsWriter(self.config.OUTPUT, self.rt.is_main)
        self.ctx.metrics = metrics
        result: dict = {"max_accuracy": self.max_accuracy}
        started = time.time()
        try:
            with self.stop:
                for epoch in range(start_epoch, self.config.TRAIN.EPOCHS):
                    result = self._epoch(epoch, start_batch if epoch == start_epoch else 0)
                    metrics.epoch(result)
        finally:
            metrics.close()
        self.logger.info(f"training took {time.time() - started:.0f}s; best val top-1 {self.max_accuracy:.2f}%")
        return result

    def _epoch(self, epoch: int, start_batch: int) -> dict:
        sampler = self.data.loader_train.sampler
        sampler.set_epoch(epoch)
        sampler.skip_next(start_batch * self.config.DATA.BATCH_SIZE)
        train_stats = engine.train_one_epoch(self.ctx, self.data.loader_train, epoch, start_batch)
        # The bare model: DDP's forward may talk to the other ranks, and a rank can have no validation images.
        val_stats = engine.validate(self.bare, self.data.loader_val, self.rt)
        is_best = val_stats["top1"] >= self.max_accuracy
        self.max_accuracy = max(self.max_accuracy, val_stats["top1"])
        self.logger.info(f"epoch {epoch}: val top-1 {val_stats['top1']:.2f}% top-5 {val_stats['top5']:.2f}% "
                         f"loss {val_stats['loss']:.4f} (best top-1 {self.max_accuracy:.2f}%)")
        if self.ctx.ema is not None:
            ema_stats = engine.validate(self.ctx.ema.module, self.data.loader_val, self.rt)
            self.logger.info(f"epoch {epoch}: EMA val top-1 {ema_stats['top1']:.2f}% loss {ema_stats['loss']:.4f}")
            val_stats.update(ema_top1=ema_stats["top1"], ema_loss=ema_stats["loss"])
        if epoch % self.config.SAVE_FREQ == 0 or epoch == self.config.TRAIN.EPOCHS - 1:
            self.save(epoch + 1, 0, is_best)
        return {"epoch": epoch, **train_stats, **{f"val_{k}": v for k, v in val_stats.items()},
                "max_accuracy": self.max_accuracy}


def run_training(config: CfgNode, rt: Runtime, logger: logging.Logger) -> dict:
    return Training(config, rt, logger).run()
