"""Training checkpoints: what is saved, and restoring weights, optimizer and schedule from them."""

import logging
import os
from typing import Optional

import torch
from torch import nn
from yacs.config import CfgNode

from models.pretrained import DERIVED_BUFFERS, adapt_state_dict
from utils import CheckpointError, load_checkpoint_file, model_state_from, rng_state, save_checkpoint, set_rng_state


def _check_fits(model: nn.Module, state: dict, path: str, hint: str) -> None:
    """Raise a CheckpointError listing the first mismatched keys when `state` does not fit `model`."""
    target = model.state_dict()
    wanted = [k for k in target if not k.endswith(DERIVED_BUFFERS)]
    given = [k for k in state if not k.endswith(DERIVED_BUFFERS)]
    problems = []
    for key in wanted:
        if key not in state:
            problems.append(f"missing {key}")
        elif state[key].shape != target[key].shape:
            problems.append(f"{key} {tuple(state[key].shape)} vs {tuple(target[key].shape)}")
    problems += [f"unexpected {k}" for k in given if k not in target]
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"checkpoint {path} does not fit this model ({shown}); {hint}")


def load_weights(model: nn.Module, state: dict, path: str, hint: str) -> None:
    """Load `state` into `model`, requiring every parameter; the derived buffers are recomputed, not loaded."""
    _check_fits(model, state, path, hint)
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}, strict=False)


def load_pretrained(model: nn.Module, path: str, logger: logging.Logger) -> None:
    """Fine-tuning start: weights adapted to the model's window, size and classes; nothing else restored."""
    state = adapt_state_dict(model_state_from(load_checkpoint_file(path), path), model, logger)
    target = model.state_dict()
    head = {k for k in ("head.weight", "head.bias") if k in target and k not in state}
    state.update({k: target[k] for k in head})
    load_weights(model, state, path, "it is from another architecture; pick the config it was trained with")
    logger.info(f"loaded pretrained weights from {path}")


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object,
                   scaler: torch.amp.GradScaler, progress: dict, config: CfgNode) -> dict:
    """The reference checkpoint keys, plus what exact resumption needs; all readable with weights_only."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": config.dump(),
        "rng": rng_state(),
        **progress,
    }


def save_training_state(payload: dict, output_dir: str, is_best: bool = False) -> str:
    """Write the checkpoint for `payload["resume_at"]` (and `best.pth` when it is the best so far), atomically.

    An epoch's end is `ckpt_epoch_{epoch}.pth`; a point inside epoch E after B batches is
    `ckpt_epoch_{E}_step_{B}.pth`.
    """
    epoch, batches = payload["resume_at"]
    name = f"ckpt_epoch_{epoch}_step_{batches}.pth" if batches else f"ckpt_epoch_{epoch - 1}.pth"
    path = os.path.join(output_dir, name)
    save_checkpoint(payload, path)
    if is_best:
        save_checkpoint(payload, os.path.join(output_dir, "best.pth"))
    return path


def resume_training_state(path: str, model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
                          scheduler: Optional[object], scaler: Optional[torch.amp.GradScaler],
                          ema_model: Optional[nn.Module] = None) -> dict:
    """Restore weights and, for a training checkpoint, optimizer, schedule, scaler, RNG and EMA states.

    Returns the checkpoint's progress entries (epoch, max_accuracy, ...) and `resume_at`, the
    (epoch, batches done) to continue from; a reference checkpoint continues after its epoch.
    """
    payload = load_checkpoint_file(path)
    load_weights(model, model_state_from(payload, path), path,
                 "to start from other weights use --pretrained, which adapts them")
    if optimizer is not None and "optimizer" in payload:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["lr_scheduler"])
        scaler.load_state_dict(payload["scaler"])
        if "rng" in payload:
            set_rng_state(payload["rng"])
    if ema_model is not None:
        load_weights(ema_model, payload.get("model_ema", model_state_from(payload, path)), path,
                     "its EMA weights are from another model")
    progress = {k: payload[k] for k in ("epoch", "max_accuracy", "class_names") if k in payload}
    progress["resume_at"] = tuple(payload.get("resume_at", (payload.get("epoch", -1) + 1, 0)))
    return progress
