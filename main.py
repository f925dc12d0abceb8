"""Train, evaluate or time a Swin Transformer: the command line, with the reference code's flags.

    python main.py --cfg configs/demo_digits.yaml
    torchrun --nproc_per_node 8 main.py --cfg configs/swin_tiny.yaml --data-path /data/imagenet --batch-size 128
    python main.py --cfg configs/swin_tiny.yaml --data-path DIR --eval --resume ckpt.pth
    python main.py --cfg configs/swin_tiny.yaml --throughput --disable_amp
"""

import argparse
import difflib
import os
import sys
import time
from typing import NoReturn, Optional

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from yacs.config import CfgNode

import engine
from checkpoint import load_pretrained, resume_training_state, save_training_state, training_state
from config import get_config
from data import LoaderBundle, build_loader
from logger import MetricsWriter, create_logger
from lr_scheduler import build_scheduler, scale_lrs
from models import build_model
from optimizer import build_optimizer
from runtime import Runtime, init_runtime, shutdown_runtime, wrap_model
from utils import UserError, find_resume_checkpoint, seed_everything


class StrictParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (with the nearest flag) and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments:" in message:
            unknown = message.split(":", 1)[1].split()
            flags = [s for a in self._actions for s in a.option_strings]
            close = [m for u in unknown if u.startswith("-") for m in difflib.get_close_matches(u, flags, n=1)]
            if close:
                message += f" (did you mean {close[0]}?)"
        print(f"error: {message}; see `python main.py --help`", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = StrictParser("main.py", description="Swin Transformer training and evaluation", allow_abbrev=False)
    parser.add_argument("--cfg", required=True, metavar="FILE", help="path to the config file")
    parser.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE", help="config KEY VALUE pairs")
    parser.add_argument("--batch-size", type=int, help="batch size per process")
    parser.add_argument("--data-path", help="dataset folder")
    parser.add_argument("--zip", action="store_true", help="read train.zip / val.zip with map files")
    parser.add_argument("--cache-mode", choices=("no", "full", "part"), help="zip cache: no, full or part")
    parser.add_argument("--pretrained", help="weights to fine-tune from (adapted to the model)")
    parser.add_argument("--resume", help="checkpoint to resume from")
    parser.add_argument("--accumulation-steps", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing to save memory")
    parser.add_argument("--disable_amp", action="store_true", help="run in fp32")
    parser.add_argument("--output", metavar="PATH", help="output root (default: output)")
    parser.add_argument("--tag", help="run tag")
    parser.add_argument("--eval", action="store_true", help="only evaluate")
    parser.add_argument("--throughput", action="store_true", help="only measure inference throughput")
    parser.add_argument("--optim", help="optimizer (adamw or sgd)")
    parser.add_argument("--num-classes", type=int, help="class count (checked against the data)")
    parser.add_argument("--amp-dtype", choices=("fp16", "bf16"), help="mixed-precision dtype")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (default: CUDA when available)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the launcher")
    return parser.parse_args(argv)


def build_criterion(config: CfgNode, has_mixup: bool) -> nn.Module:
    if has_mixup:
        return SoftTargetCrossEntropy()
    if config.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    return nn.CrossEntropyLoss()


def _with(config: CfgNode, **values: object) -> CfgNode:
    """A frozen copy of `config` with MODEL/TRAIN keys given as GROUP__KEY=value."""
    config = config.clone()
    config.defrost()
    for name, value in values.items():
        group, key = name.split("__")
        config[group][key] = value
    config.freeze()
    return config


def _build_model(config: CfgNode, rt: Runtime, logger: object) -> tuple[nn.Module, nn.Module]:
    model = build_model(config)
    params = sum(p.numel() for p in model.parameters())
    flops = model.flops() if hasattr(model, "flops") else 0
    logger.info(f"model {config.MODEL.NAME}: {params:,} parameters, {flops / 1e9:.3g} GMACs at {config.DATA.IMG_SIZE}px")
    return wrap_model(model, rt)


def run_throughput(config: CfgNode, rt: Runtime, logger: object) -> dict:
    """Inference images/s on one batch: from the validation set when a dataset is given, else synthetic."""
    model, bare = _build_model(config, rt, logger)
    if config.DATA.DATA_PATH or config.DATA.DATASET in ("digits", "fake"):
        images = next(iter(build_loader(config, rt, logger).loader_val))[0]
    else:
        images = torch.randn(config.DATA.BATCH_SIZE, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    result = engine.throughput(bare, images, rt)
    logger.info(f"throughput: {rt.describe()}, torch {torch.__version__}, batch {int(result['batch_size'])}, "
                f"{result['img_s']:.1f} img/s, {result['ms_per_batch']:.1f} ms/batch, "
                f"peak memory {result['peak_memory_mb']:.0f} MB")
    return result


def run_eval(config: CfgNode, rt: Runtime, logger: object) -> dict:
    if not (config.MODEL.RESUME or config.MODEL.PRETRAINED):
        raise UserError("--eval needs weights: pass --resume CKPT or --pretrained CKPT")
    data = build_loader(config, rt, logger)
    config = _with(config, MODEL__NUM_CLASSES=data.num_classes)
    model, bare = _build_model(config, rt, logger)
    if config.MODEL.RESUME:
        resume_training_state(config.MODEL.RESUME, bare, None, None, None)
    else:
        load_pretrained(bare, config.MODEL.PRETRAINED, logger)
    result = engine.validate(model, data.loader_val, rt)
    logger.info(f"eval on {int(result['count'])} images: top-1 {result['top1']:.3f}% top-5 {result['top5']:.3f}% "
                f"loss {result['loss']:.4f}")
    return result


def _restore(config: CfgNode, bare: nn.Module, ctx: engine.TrainContext, logger: object) -> tuple[int, float]:
    """Resume (explicit, else automatic from the output folder) or start from pretrained weights."""
    path = config.MODEL.RESUME
    if not path and config.TRAIN.AUTO_RESUME:
        path = find_resume_checkpoint(config.OUTPUT, logger)
        if path:
            logger.info(f"auto-resume from {path}")
    if path:
        progress = resume_training_state(path, bare, ctx.optimizer, ctx.scheduler, ctx.scaler)
        logger.info(f"resumed from {path} after epoch {progress.get('epoch', -1)}")
        return progress.get("epoch", -1) + 1, progress.get("max_accuracy", 0.0)
    if config.MODEL.PRETRAINED:
        load_pretrained(bare, config.MODEL.PRETRAINED, logger)
    return config.TRAIN.START_EPOCH, 0.0


def _make_context(config: CfgNode, rt: Runtime, data: LoaderBundle, model: nn.Module, bare: nn.Module,
                  logger: object) -> engine.TrainContext:
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


def run_training(config: CfgNode, rt: Runtime, logger: object) -> dict:
    data = build_loader(config, rt, logger)
    config = _with(config, MODEL__NUM_CLASSES=data.num_classes)
    model, bare = _build_model(config, rt, logger)
    ctx = _make_context(config, rt, data, model, bare, logger)
    start_epoch, max_accuracy = _restore(config, bare, ctx, logger)
    metrics = MetricsWriter(config.OUTPUT, rt.is_main)
    result: dict = {"max_accuracy": max_accuracy}
    started = time.time()
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        data.loader_train.sampler.set_epoch(epoch)
        train_stats = engine.train_one_epoch(ctx, data.loader_train, epoch)
        val_stats = engine.validate(model, data.loader_val, rt)
        max_accuracy = max(max_accuracy, val_stats["top1"])
        logger.info(f"epoch {epoch}: val top-1 {val_stats['top1']:.2f}% top-5 {val_stats['top5']:.2f}% "
                    f"loss {val_stats['loss']:.4f} (best top-1 {max_accuracy:.2f}%)")
        is_last = epoch == config.TRAIN.EPOCHS - 1
        if rt.is_main and (epoch % config.SAVE_FREQ == 0 or is_last):
            progress = {"epoch": epoch, "max_accuracy": max_accuracy, "class_names": data.class_names}
            path = save_training_state(training_state(bare, ctx.optimizer, ctx.scheduler, ctx.scaler, progress,
                                                      config), config.OUTPUT, epoch,
                                       is_best=val_stats["top1"] >= max_accuracy)
            logger.info(f"saved {path}")
        result = {"epoch": epoch, **train_stats, **{f"val_{k}": v for k, v in val_stats.items()},
                  "max_accuracy": max_accuracy}
        metrics.epoch(result)
        rt.barrier()
    metrics.close()
    logger.info(f"training took {time.time() - started:.0f}s; best val top-1 {max_accuracy:.2f}%")
    return result


def run(config: CfgNode) -> dict:
    """Set up this process and run the mode the config asks for."""
    rt = init_runtime(config)
    try:
        logger = create_logger(config.OUTPUT, rt.rank)
        if rt.is_main:
            with open(os.path.join(config.OUTPUT, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(config.dump())
        logger.info(f"{rt.describe()}; output {config.OUTPUT}")
        seed_everything(config.SEED + rt.rank)
        if config.THROUGHPUT_MODE:
            return run_throughput(config, rt, logger)
        if config.EVAL_MODE:
            return run_eval(config, rt, logger)
        return run_training(config, rt, logger)
    finally:
        shutdown_runtime(rt)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(get_config(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
