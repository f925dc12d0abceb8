"""Optimizers with the reference parameter groups: no weight decay on norms, biases and position tables, and
layer-wise learning-rate decay for fine-tuning (TRAIN.LAYER_DECAY).

Layer decay follows the reference's layer assignment (its SimMIM fine-tuning code): the patch
embedding (and a mask token) is layer 0, block j of stage i is layer sum(depths[:i]) + j + 1, a
stage's downsampling sits with its last block, and everything else (absolute position embedding,
final norm, head) is the last layer, sum(depths) + 1. Layer l trains at
lr x LAYER_DECAY ** (sum(depths) + 1 - l). The factor is applied once, through the scheduler's
`lr_scale`: the reference also multiplies it into each group's starting lr, so on current timm
(whose schedulers apply `lr_scale` themselves) its lower layers get the factor squared.
"""

import re

from torch import nn, optim
from yacs.config import CfgNode

from utils import ConfigError


def _no_decay_names(model: nn.Module) -> tuple[set[str], set[str]]:
    names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    keywords = model.no_weight_decay_keywords() if hasattr(model, "no_weight_decay_keywords") else set()
    return set(names), set(keywords)


def stage_depths(model: nn.Module) -> list[int]:
    """Blocks per stage of a Swin-family model."""
    return [len(stage.blocks) for stage in model.layers]


def layer_id(name: str, depths: list[int]) -> int:
    """The reference's layer of parameter `name` for layer decay: 0 (embedding) to sum(depths) + 1 (head)."""
    if name.startswith(("patch_embed", "mask_token")):
        return 0
    match = re.match(r"layers\.(\d+)\.(blocks\.(\d+)|downsample)\.", name)
    if match is None:
        return sum(depths) + 1
    stage = int(match.group(1))
    if match.group(3) is None:
        return sum(depths[: stage + 1])
    return sum(depths[:stage]) + int(match.group(3)) + 1


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Decayed weights and exempt ones (1-D parameters, biases, the model's named exceptions) at weight decay 0;
    with layer decay below 1, one such pair per layer, each with its `lr_scale`. Frozen parameters are left out."""
    skip, keywords = _no_decay_names(model)
    depths = stage_depths(model) if layer_decay != 1.0 else []
    last = sum(depths) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim == 1 or name.endswith(".bias") or name in skip or any(k in name for k in keywords)
        layer = layer_id(name, depths) if depths else last
        group = groups.setdefault((layer, exempt), {"params": [], "weight_decay": 0.0 if exempt else weight_decay})
        if depths:
            group["lr_scale"] = layer_decay ** (last - layer)
        group["params"].append(param)
    if not depths:  # the two reference groups, decayed first, even when one is empty
        return [groups.get((last, False), {"params": [], "weight_decay": weight_decay}),
                groups.get((last, True), {"params": [], "weight_decay": 0.0})]
    return [groups[key] for key in sorted(groups)]


def build_optimizer(config: CfgNode, model: nn.Module, lr: float, fused: bool) -> optim.Optimizer:
    """TRAIN.OPTIMIZER.NAME (adamw or sgd) at learning rate `lr`, fused where the device supports it."""
    opt = config.TRAIN.OPTIMIZER
    groups = parameter_groups(model, config.TRAIN.WEIGHT_DECAY, config.TRAIN.LAYER_DECAY)
    name = opt.NAME.lower()
    kernel = {"fused": True} if fused else {"foreach": True}
    if name == "adamw":
        return optim.AdamW(groups, lr=lr, betas=tuple(opt.BETAS), eps=opt.EPS, **kernel)
    if name == "sgd":
        return optim.SGD(groups, lr=lr, momentum=opt.MOMENTUM, nesterov=True, **kernel)
    raise ConfigError(f"TRAIN.OPTIMIZER.NAME {opt.NAME!r} is not known; use adamw or sgd")
