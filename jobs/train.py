"""Training, the main job of main.py: with resume, fine-tuning starts and preemption.

It builds data, model, optimizer and schedule from the config and the runtime, then hands plain
objects to the loops in jobs/engine.py; checkpoints are read and written through checkpoints/.
"""

import logging
import os
import time
from typing import Optional

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from yacs.config import CfgNode

from checkpoints.entries import malformed_entry
from checkpoints.progress import (
    ResumePoint,
    progress_entries,
    read_resume_point,
    restore_optimizer,
    restore_scaler,
    save_training_state,
    training_state,
)
from checkpoints.run_folder import (
    BEST_CHECKPOINT,
    check_folder_token,
    check_nothing_overwritten,
    check_resumable,
    continued_checkpoint,
    find_resume_checkpoint,
    new_folder_token,
    prune_checkpoints,
    remove_folder_token,
    remove_stale_temporaries,
    settings_differences,
    write_config,
)
from checkpoints.weights import load_model_weights, load_pretrained, load_weights
from data import LoaderBundle, build_loader
from data.simmim import build_mask_generator
from jobs import engine
from jobs.results import ClassTally, describe
from jobs.stopping import Interrupted, StopFlag
from logger import MetricsWriter
from lr_scheduler import build_scheduler, scale_lrs
from models import build_model
from models.freeze import freeze
from models.summary import summarize
from optimizer import build_optimizer
from runtime import Runtime, prepare_for_training, wrap_model
from utils import UserError, counted


def build_criterion(config: CfgNode, has_mixup: bool) -> Optional[nn.Module]:
    """The classification loss; None in SimMIM pre-training, whose model returns its reconstruction loss."""
    if config.MODEL.SIMMIM.PRETRAIN:
        return None
    if has_mixup:
        return SoftTargetCrossEntropy()
    if config.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    return nn.CrossEntropyLoss()


def blank_batch(config: CfgNode, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """One all-zero RGB image at DATA.IMG_SIZE with label 0, or in SimMIM pre-training with an empty mask of the
    generator's shape: what stands in for a training batch that lost every image (engine.TrainContext.blank_batch).
    Built from the config, so it exists before the first batch, which may be that batch."""
    size = config.DATA.IMG_SIZE
    images = torch.zeros(1, 3, size, size, device=rt.device)
    if not config.MODEL.SIMMIM.PRETRAIN:
        return images, torch.zeros(1, dtype=torch.int64, device=rt.device)
    masks = build_mask_generator(config)
    side = masks.cells * masks.scale  # H/p, as MaskGenerator repeats each cell over the model patches it covers
    return images, torch.zeros(1, side, side, dtype=torch.bool, device=rt.device)


def with_num_classes(config: CfgNode, num_classes: int) -> CfgNode:
    """`config` building a model with `num_classes` outputs (the data's or the checkpoint's class count)."""
    config = config.clone()
    config.defrost()
    config.MODEL.NUM_CLASSES = num_classes
    config.freeze()
    return config


def new_model(config: CfgNode, rt: Runtime, logger: logging.Logger) -> nn.Module:
    """The config's model on this process's device, with its summary logged."""
    model = build_model(config).to(rt.device)
    logger.info("model " + summarize(model, config.MODEL.NAME))
    return model


def _build_training_model(config: CfgNode, rt: Runtime, logger: logging.Logger) -> tuple[nn.Module, nn.Module]:
    """The model to train, with the parts fine-tuning leaves alone frozen, wrapped for this runtime."""
    model = new_model(config, rt, logger)
    frozen = freeze(model, config.TRAIN.FREEZE_STAGES, config.TRAIN.LINEAR_PROBE)
    if frozen:
        total = sum(p.numel() for p in model.parameters())
        what = "all but the head" if config.TRAIN.LINEAR_PROBE else \
            f"patch embedding and stages 0-{config.TRAIN.FREEZE_STAGES - 1}"
        logger.info(f"frozen: {what}, {frozen:,} of {total:,} parameters; training {total - frozen:,}")
    prepare_for_training(model, rt, config.TRAIN.ONEDNN_LINEAR, config.COMPILE, logger.info)
    return wrap_model(model, rt, config.COMPILE)


def _make_context(config: CfgNode, rt: Runtime, data: LoaderBundle, model: nn.Module, bare: nn.Module,
                  logger: logging.Logger) -> engine.TrainContext:
    steps_per_epoch = len(data.loader_train) // config.TRAIN.ACCUMULATION_STEPS
    lrs = scale_lrs(config, rt.world_size)
    logger.info(f"lr scaled to the global batch {config.DATA.BATCH_SIZE * rt.world_size} x "
                f"{config.TRAIN.ACCUMULATION_STEPS} accumulation: base {lrs.base:.3e}, warm-up {lrs.warmup:.3e}, "
                f"min {lrs.min:.3e}")
    optimizer = build_optimizer(config, bare, lrs.base, fused=rt.fused_optimizer)
    if config.TRAIN.LAYER_DECAY < 1:
        scales = sorted({group["lr_scale"] for group in optimizer.param_groups})
        logger.info(f"layer decay {config.TRAIN.LAYER_DECAY}: {len(scales)} layers trained at lr x{scales[0]:.3g} "
                    f"(the first) to x{scales[-1]:g} (the head)")
    return engine.TrainContext(
        model=model, criterion=build_criterion(config, data.mixup_fn is not None), optimizer=optimizer,
        scheduler=build_scheduler(config, optimizer, steps_per_epoch, lrs), scaler=rt.make_scaler(), rt=rt,
        logger=logger, mixup_fn=data.mixup_fn, clip_grad=config.TRAIN.CLIP_GRAD,
        accumulation_steps=config.TRAIN.ACCUMULATION_STEPS, print_freq=config.PRINT_FREQ,
        max_nonfinite=config.TRAIN.MAX_NONFINITE, blank_batch=blank_batch(config, rt),
    )


class Training:
    """One training run: its folder, resume point, checkpoints, preemption and the epoch loop.

    Start-up checks every input (data, checkpoint, settings; main.run holds the folder's lock) before anything in the
    run folder changes, and every rank stops together on a mistake any rank finds.
    """

    def __init__(self, config: CfgNode, rt: Runtime, logger: logging.Logger) -> None:
        self.config = config
        self.rt = rt
        self.logger = logger
        self.stop = StopFlag()
        self.history: list[dict] = []
        self.max_accuracy = 0.0
        self.resumed_from = ""
        self.differences: dict = {}
        self.run_index = 0  # runs of this training before this one (resumes), recorded in each epoch's metrics

    def _setup(self) -> ResumePoint:
        rt, config = self.rt, self.config
        if rt.is_distributed:
            self._check_shared_folder()
        self.data = rt.agreed(lambda: build_loader(config, rt, self.logger))
        self.config = with_num_classes(config, self.data.num_classes)
        self.model, self.bare = _build_training_model(self.config, rt, self.logger)
        self.ctx = _make_context(self.config, rt, self.data, self.model, self.bare, self.logger)
        path = rt.broadcast_object(rt.agreed(self._choose_checkpoint))
        return rt.agreed(lambda: self._restore(path))

    def _check_shared_folder(self) -> None:
        """Every rank must write to the folder rank 0 writes to (a shared file system across nodes)."""
        rt, folder = self.rt, self.config.OUTPUT
        token = rt.broadcast_object(new_folder_token(folder) if rt.is_main else "")
        try:
            rt.agreed(lambda: check_folder_token(folder, token))
        finally:
            if rt.is_main:
                remove_folder_token(folder, token)

    def _choose_checkpoint(self) -> str:
        """(On rank 0, for every rank) --resume, or where it started this folder's run the newest checkpoint of that
        run; else the newest readable checkpoint of the output folder."""
        config = self.config
        if not self.rt.is_main:
            return config.MODEL.RESUME
        if config.MODEL.RESUME:
            return continued_checkpoint(config, self.logger)
        if not config.TRAIN.AUTO_RESUME:
            return ""
        path = find_resume_checkpoint(config.OUTPUT, self.logger) or ""
        if path:
            self.logger.info(f"auto-resume from {path}")
        return path

    def _restore(self, path: str) -> ResumePoint:
        """Weights, optimizer, scaler, EMA and RNG from `path`, or pretrained weights for a new run."""
        config, ctx = self.config, self.ctx
        if not path:
            check_nothing_overwritten(config, "", (config.TRAIN.START_EPOCH, 0))
            if config.MODEL.PRETRAINED:
                load_pretrained(self.bare, config.MODEL.PRETRAINED, self.logger, self.data.class_names)
            self._start_ema(None)
            return ResumePoint("", config.TRAIN.START_EPOCH, 0)
        payload = load_model_weights(path, self.bare, self.logger)
        point = read_resume_point(path, payload)
        check_nothing_overwritten(config, path, (point.epoch, point.batches))
        self.differences = (settings_differences(point.config_text, self.config, point.world_size,
                                                 self.rt.world_size) if point.config_text else {})
        check_resumable(config, self.differences, point, self.logger)
        if isinstance(payload.get("optimizer"), dict) and "state" in payload["optimizer"]:
            restore_optimizer(ctx.optimizer, payload, self.bare, path)
            restore_scaler(ctx.scaler, payload)
        else:
            self.logger.warning(f"{path} holds no optimizer state: the optimizer's moments start afresh, so this "
                                "continuation is not what an uninterrupted run would have done")
        self._start_ema(payload.get("model_ema"), path)
        if len(point.rng) == self.rt.world_size:
            try:
                self.rt.set_rng_state(point.rng[self.rt.rank])
            except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
                raise malformed_entry(path, "rng", str(err)) from None
        elif point.rng:
            self.logger.warning(f"{path} holds the random states of {len(point.rng)} processes, not "
                                f"{self.rt.world_size}: this run draws from SEED + rank instead")
        self.history, self.max_accuracy, self.resumed_from = point.history, point.max_accuracy, path
        self.run_index = point.run_index + 1
        total = len(self.data.loader_train)
        if point.batches > total:
            raise UserError(f"checkpoint {path} was written after {point.batches} batches of epoch {point.epoch}, and "
                            f"an epoch of this data now has {total}; resume with the data and batch size it was "
                            "trained with, or from the end of an epoch")
        done = point.epoch * total + point.batches
        ctx.scheduler.step_update(done // config.TRAIN.ACCUMULATION_STEPS)
        self.logger.info(f"resumed from {path}: epoch {point.epoch}, {point.batches} batches done")
        return point

    def _start_ema(self, state: Optional[dict], path: str = "") -> None:
        """The EMA starts from the weights training starts from (pretrained or resumed), or from its saved state."""
        if self.config.TRAIN.EMA_DECAY > 0:
            self.ctx.ema = engine.ModelEma(self.bare, self.config.TRAIN.EMA_DECAY)
            if state is not None:
                load_weights(self.ctx.ema.module, state, path, "its EMA weights are from another model")

    def save(self, epoch: int, batches: int, is_best: bool = False) -> str:
        """Checkpoint on rank 0 at (epoch to run, batches of it done), with every rank's RNG; all ranks wait for it."""
        if batches:  # a mid-epoch checkpoint carries the epoch's sums, some of which are still on the device
            engine.flush(self.ctx, epoch)
        rng = self.rt.all_gather_object(self.rt.rng_state())
        path = ""
        if self.rt.is_main:
            point = ResumePoint("", epoch, batches, self.max_accuracy, self.ctx.totals, self.history, rng,
                                self.rt.world_size, run_index=self.run_index, class_names=self.data.class_names)
            state = training_state(self.bare, self.ctx.optimizer, self.ctx.scheduler, self.ctx.scaler,
                                   progress_entries(point), self.config)
            if self.ctx.ema is not None:
                state["model_ema"] = self.ctx.ema.module.state_dict()
            path = save_training_state(state, self.config.OUTPUT, is_best)
            self.logger.info(f"saved {path}")
            prune_checkpoints(self.config.OUTPUT, self.config.TRAIN.KEEP_CHECKPOINTS, (path, self.resumed_from),
                              self.logger)
        self.rt.barrier()
        return path

    def after_step(self, epoch: int, batches: int, signum: int) -> None:
        """Save inside the epoch every TRAIN.SAVE_STEPS steps, or on a signal and then stop with Interrupted."""
        every = self.config.TRAIN.SAVE_STEPS
        if signum or (every and (batches // self.config.TRAIN.ACCUMULATION_STEPS) % every == 0):
            path = self.save(epoch, batches)
            if signum:
                raise Interrupted(signum, path or "a checkpoint (rank 0)")

    def _prepare_folder(self, point: ResumePoint) -> MetricsWriter:
        """The run folder's writes, after every check passed: stale temporaries, config.yaml, metrics."""
        folder = self.config.OUTPUT
        if self.rt.is_main:
            for stale in remove_stale_temporaries(folder):
                self.logger.info(f"removed {stale}, left by a run killed while saving")
            write_config(folder, self.config, point.epoch, self.differences)
        metrics = MetricsWriter(folder, self.rt.is_main, purge_step=point.epoch * len(self.data.loader_train)
                                + point.batches + 1, purge_epoch=point.epoch)
        metrics.rewrite(self.history)
        return metrics

    def run(self) -> dict:
        point = self._setup()
        if point.epoch >= self.config.TRAIN.EPOCHS:
            outcome = self._outcome() if self.history else f"best val top-1 {self.max_accuracy:.2f}%"
            self.logger.info(f"run {self.config.OUTPUT} is finished: {counted(point.epoch, 'epoch')}, {outcome}; to "
                             f"train longer, pass --resume {point.path} with a larger TRAIN.EPOCHS")
            return {"max_accuracy": self.max_accuracy}
        return self._train(point)

    def _train(self, point: ResumePoint) -> dict:
        metrics = self.rt.agreed(lambda: self._prepare_folder(point))
        self.ctx.metrics, self.ctx.step_hook = metrics, self.after_step
        self.ctx.stop_signal = lambda: self.stop.signum
        result: dict = {"max_accuracy": self.max_accuracy}
        started = time.time()
        try:
            with self.stop:
                for epoch in range(point.epoch, self.config.TRAIN.EPOCHS):
                    resumed = epoch == point.epoch
                    result = self._epoch(epoch, point.batches if resumed else 0, point.totals if resumed else None)
                    metrics.epoch(result)
        finally:
            metrics.close()
        self.logger.info(f"training took {time.time() - started:.0f}s in this run; {self._outcome()}")
        return result

    def _outcome(self) -> str:
        """Best epoch, its top-1, where best.pth is (pre-training: the last loss), and the time of every run of
        this training together."""
        seconds = sum(r.get("train_s", 0.0) + r.get("val_s", 0.0) for r in self.history)
        took = (f"{counted(len(self.history), 'epoch')} took {seconds / 60:.1f} min of training and validation over "
                "all runs")
        if "val_top1" not in self.history[-1]:
            return f"last epoch's reconstruction loss {self.history[-1]['train_loss']:.4f}; {took}"
        best = max(reversed(self.history), key=lambda r: r["val_top1"])  # the last of equals, as best.pth is
        path = os.path.join(self.config.OUTPUT, BEST_CHECKPOINT)
        where = (f"weights {path}" if os.path.exists(path)
                 else f"{BEST_CHECKPOINT} not written (SAVE_FREQ skipped that epoch)")
        return f"best val top-1 {best['val_top1']:.2f}% at epoch {best['epoch']}, {where}; {took}"

    def _epoch(self, epoch: int, start_batch: int, totals: Optional[dict]) -> dict:
        sampler = self.data.loader_train.sampler
        sampler.set_epoch(epoch)
        sampler.skip_next(start_batch * self.config.DATA.BATCH_SIZE)
        train_stats = engine.train_one_epoch(self.ctx, self.data.loader_train, epoch, start_batch, totals)
        due = epoch % self.config.SAVE_FREQ == 0 or epoch == self.config.TRAIN.EPOCHS - 1
        # Saved before validation, so an unreadable validation image does not cost the epoch's training.
        validates = self.data.loader_val is not None
        before_validation = self.save(epoch, len(self.data.loader_train)) if due and validates else ""
        val_started = time.time()
        val_stats = self._validate(epoch) if validates else {}
        if not val_stats:
            self.logger.info(f"epoch {epoch}: reconstruction loss {train_stats['train_loss']:.4f}")
        is_best = bool(val_stats) and val_stats["top1"] >= self.max_accuracy
        self.max_accuracy = max(self.max_accuracy, val_stats.get("top1", 0.0))
        record = {"epoch": epoch, **train_stats, **{f"val_{k}": v for k, v in val_stats.items()},
                  "max_accuracy": self.max_accuracy, "val_s": time.time() - val_started, "run": self.run_index}
        self.history.append(record)
        if due:
            self.save(epoch + 1, 0, is_best)
            if before_validation and os.path.exists(before_validation):
                os.remove(before_validation)
        return record

    def _validate(self, epoch: int) -> dict:
        """Validation figures of the epoch (with per-class files after the last, and the EMA's), logged."""
        # The bare model: DDP's forward may talk to the other ranks, and a rank can have no validation images.
        last = epoch == self.config.TRAIN.EPOCHS - 1
        tally = ClassTally(self.config.MODEL.NUM_CLASSES, self.rt.device) if last else None
        val_stats = engine.validate(self.bare, self.data.loader_val, self.rt, tally, self.logger,
                                    self.config.PRINT_FREQ)
        best = max(self.max_accuracy, val_stats["top1"])
        self.logger.info(f"epoch {epoch}: val {describe(val_stats)} (best top-1 {best:.2f}%)")
        if tally is not None and self.rt.is_main:
            for path in tally.write(self.config.OUTPUT, "val", self.data.class_names):
                self.logger.info(f"wrote {path}")
        if self.ctx.ema is not None:
            ema_stats = engine.validate(self.ctx.ema.module, self.data.loader_val, self.rt)
            self.logger.info(f"epoch {epoch}: EMA val top-1 {ema_stats['top1']:.2f}% loss {ema_stats['loss']:.4f}")
            val_stats.update(ema_top1=ema_stats["top1"], ema_loss=ema_stats["loss"])
        return val_stats


def run_training(config: CfgNode, rt: Runtime, logger: logging.Logger) -> dict:
    return Training(config, rt, logger).run()
