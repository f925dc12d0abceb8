"""The jobs of main.py that train nothing: --eval (with per-class results) and --throughput."""

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode

import engine
from checkpoint import load_pretrained, load_weights, reference_state
from checkpoint_entries import check_entries
from data import build_eval_loader, build_loader
from evaluation import ClassTally, describe
from runtime import Runtime, prepare_for_inference
from trainer import new_model, with_num_classes
from utils import CheckpointError, DataError, UserError, load_checkpoint_file


def inference_compile_choice(config: CfgNode) -> str:
    """TEST.COMPILE, or on when --compile (COMPILE) compiles every use of the model."""
    return "on" if config.COMPILE else config.TEST.COMPILE


def run_throughput(config: CfgNode, rt: Runtime, logger: logging.Logger) -> dict:
    """Inference images/s on one batch: from the validation set when a dataset is given, else synthetic."""
    model = new_model(config, rt, logger)
    if config.DATA.DATA_PATH or config.DATA.DATASET in ("digits", "fake"):
        images = next(iter(build_loader(config, rt, logger).loader_val))[0]
    else:
        images = torch.randn(config.DATA.BATCH_SIZE, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    choice = inference_compile_choice(config)
    model = prepare_for_inference(model, images.to(rt.device), choice, logger.info, rt.autocast)
    result = engine.throughput(model, images, rt)
    logger.info(f"throughput: {rt.describe()}, torch {torch.__version__}, compile {choice}, "
                f"batch {int(result['batch_size'])}, {result['img_s']:.1f} img/s, "
                f"{result['ms_per_batch']:.1f} ms/batch, peak memory {result['peak_memory_mb']:.0f} MB")
    return result


def _eval_setup(config: CfgNode, rt: Runtime, logger: logging.Logger
                ) -> tuple[nn.Module, DataLoader, list[str], int]:
    """The model with the weights to evaluate, and the validation data labelled as that model numbers its classes.

    --resume weights are taken as they are, with the class count of their head; --pretrained ones
    are adapted to the data's classes (by name, where the checkpoint names its own), as fine-tuning would start
    from them, and refused where their head would start from scratch.
    """
    path = config.MODEL.RESUME or config.MODEL.PRETRAINED
    if not path:
        raise UserError("--eval needs weights: pass --resume CKPT or --pretrained CKPT")
    if not config.MODEL.RESUME:
        loader, classes, names = build_eval_loader(config, rt, None, logger)
        bare = new_model(with_num_classes(config, classes), rt, logger)
        if "head.weight" in load_pretrained(bare, path, logger, names):
            raise CheckpointError(f"--eval --pretrained {path}: its head does not answer for the data's {classes} "
                                  "classes and would start from scratch, so there is nothing to evaluate; evaluate it "
                                  "on the data it was trained for, or fine-tune it (the same command without --eval)")
        return bare, loader, names, classes
    payload = load_checkpoint_file(path)
    state, _ = reference_state(payload, path, logger)
    check_entries(payload, path)
    loader, data_classes, names = build_eval_loader(config, rt, payload.get("class_names"), logger)
    classes = state["head.weight"].shape[0] if "head.weight" in state else data_classes
    if data_classes > classes:
        raise DataError(f"the data has {data_classes} classes and the head of {path} {classes}; evaluate it on the "
                        "data it was trained for, or fine-tune it with --pretrained")
    bare = new_model(with_num_classes(config, classes), rt, logger)  # no DDP wrapper, and no collective here
    load_weights(bare, state, path, "pick the config it was trained with, or leave --cfg out to use its own")
    return bare, loader, names, classes


def run_eval(config: CfgNode, rt: Runtime, logger: logging.Logger) -> dict:
    """Evaluate the weights given; main.run holds the output folder, so eval_* files never land in a folder a
    running training (or another evaluation) is writing."""
    bare, loader, names, classes = rt.agreed(lambda: _eval_setup(config, rt, logger))
    tally = ClassTally(classes, rt.device)
    size = config.DATA.IMG_SIZE
    example = torch.zeros(loader.batch_size or 1, 3, size, size, device=rt.device)
    model = prepare_for_inference(bare, example, inference_compile_choice(config), logger.info, rt.autocast)
    result = engine.validate(model, loader, rt, tally, logger, config.PRINT_FREQ)
    logger.info(f"eval on {int(result['count'])} images: {describe(result, digits=3)}")
    if rt.is_main:
        for path in tally.write(config.OUTPUT, "eval", names):
            logger.info(f"wrote {path}")
    return result
