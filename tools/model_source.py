"""The model a tool works on: --cfg and --opts, or the config its weights carry, and the weights themselves.

predict, export and summary take the same three flags. Weights are a file, a model zoo name or
a URL (downloaded once into the torch hub cache); without --cfg the model is rebuilt from the
config stored in a checkpoint written here, or from a zoo name's published config.
"""

import argparse
from typing import Optional

import torch
from torch import nn
from yacs.config import CfgNode

from checkpoints.download import local_weights
from checkpoints.weights import head_classes, load_weights, read_checkpoint
from config import config_from_weights, load_config
from models import build_model, zoo
from utils import ConfigError


def add_model_arguments(parser: argparse.ArgumentParser, weights_help: str) -> None:
    parser.add_argument("--cfg", help="the model's config (default: the one stored with the weights)")
    parser.add_argument("--resume", metavar="WEIGHTS", help=weights_help)
    parser.add_argument("--opts", nargs="+", metavar="KEY VALUE", help="config KEY VALUE pairs")


def model_files(args: argparse.Namespace) -> list[str]:
    """The files the model comes from (its config and weights), which no output of the tool may replace."""
    return [path for path in (args.cfg, args.resume) if path]


def config_from_arguments(args: argparse.Namespace, weights_path: str = "", payload: Optional[dict] = None,
                          head_classes: Optional[int] = None) -> CfgNode:
    """--cfg with --opts, else the config of --resume; a checkpoint's head decides the class count."""
    opts = list(args.opts or ())
    if args.cfg:
        if head_classes is not None:
            opts = ["MODEL.NUM_CLASSES", str(head_classes)] + opts
        return load_config(args.cfg, opts)
    if not args.resume:
        raise ConfigError("no model: pass --cfg FILE, or --resume with a checkpoint written here or a model zoo name")
    if zoo.find(args.resume):
        return config_from_weights(args.resume, "--resume", opts)
    return config_from_weights(weights_path, "--resume", opts, payload)


def _check_model_kind(config: CfgNode, args: argparse.Namespace, simmim: bool) -> None:
    what = args.resume or args.cfg
    if config.MODEL.SIMMIM.PRETRAIN and not simmim:
        raise ConfigError(f"{what} is SimMIM pre-training: it reconstructs pixels and has no classifier; fine-tune "
                          "it (main.py --pretrained), or look at its reconstructions with python -m tools.reconstruct")
    if simmim and not config.MODEL.SIMMIM.PRETRAIN:
        raise ConfigError(f"{what} is a classifier; this tool needs SimMIM pre-training (a checkpoint of a run with "
                          "MODEL.SIMMIM.PRETRAIN True, or --cfg with one of configs/simmim/simmim_pretrain__*.yaml)")


def model_from_arguments(args: argparse.Namespace, simmim: bool = False) -> tuple[nn.Module, CfgNode, dict]:
    """The model in eval mode with the weights of --resume (random without), its config and the checkpoint;
    a classifier, or with `simmim` a SimMIM pre-training model."""
    path = local_weights(args.resume) if args.resume else ""
    payload, state, _ = read_checkpoint(path) if path else ({}, None, "")
    config = config_from_arguments(args, path, payload, head_classes(state) if state is not None else None)
    _check_model_kind(config, args, simmim)
    torch.manual_seed(config.SEED)
    model = build_model(config)
    if state is not None:
        load_weights(model, state, path, "pick the config it was trained with, or leave --cfg out")
    return model.eval(), config, payload
