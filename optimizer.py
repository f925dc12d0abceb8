"""Optimizers with the reference parameter groups: no weight decay on norms, biases and position tables."""

from torch import nn, optim
from yacs.config import CfgNode

from utils import ConfigError


def _no_decay_names(model: nn.Module) -> tuple[set[str], set[str]]:
    names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    keywords = model.no_weight_decay_keywords() if hasattr(model, "no_weight_decay_keywords") else set()
    return set(names), set(keywords)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and 1-D parameters, biases and the model's named exceptions at 0."""
    skip, keywords = _no_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim == 1 or name.endswith(".bias") or name in skip or any(k in name for k in keywords)
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(config: CfgNode, model: nn.Module, lr: float, fused: bool) -> optim.Optimizer:
    """TRAIN.OPTIMIZER.NAME (adamw or sgd) at learning rate `lr`, fused where the device supports it."""
    opt = config.TRAIN.OPTIMIZER
    groups = parameter_groups(model, config.TRAIN.WEIGHT_DECAY)
    name = opt.NAME.lower()
    kernel = {"fused": True} if fused else {"foreach": True}
    if name == "adamw":
        return optim.AdamW(groups, lr=lr, betas=tuple(opt.BETAS), eps=opt.EPS, **kernel)
    if name == "sgd":
        return optim.SGD(groups, lr=lr, momentum=opt.MOMENTUM, nesterov=True, **kernel)
    raise ConfigError(f"TRAIN.OPTIMIZER.NAME {opt.NAME!r} is not known; use adamw or sgd")
