"""--eval: the accuracy of given weights on the validation data, with per-class results."""

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from checkpoints.weights import head_classes, load_pretrained, load_weights, read_checkpoint
from data import build_eval_loader
from jobs import engine
from jobs.results import ClassTally, describe
from jobs.train import new_model, with_num_classes
from runtime import Runtime, prepare_for_inference
from utils import CheckpointError, DataError, UserError


def inference_compile_choice(config: CfgNode) -> str:
    """TEST.COMPILE, or on when --compile (COMPILE) compiles every use of the model."""
    return "on" if config.COMPILE else config.TEST.COMPILE


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
    payload, state, _ = read_checkpoint(path, logger)
    loader, data_classes, names = build_eval_loader(config, rt, payload.get("class_names"), logger)
    classes = head_classes(state)
    classes = data_classes if classes is None else classes
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
