"""Training checkpoints: what is saved, and restoring weights, optimizer and schedule from them."""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from yacs.config import CfgNode

from checkpoint_entries import check_entries, entry_of, malformed_entry, model_state_from, tensor_problem
from models.convert import (
    detect_layout,
    from_simmim,
    from_timm,
    from_torchvision,
    with_current_v2_names,
)
from models.pretrained import DERIVED_BUFFERS, adapt_state_dict
from models.simmim import SimMIM
from utils import CheckpointError, load_checkpoint_file, save_checkpoint


def _check_kind(model: nn.Module, state: dict, path: str) -> None:
    """A SimMIM pre-training state given to a classifier, or a classifier's to SimMIM, is named as such."""
    is_simmim_state = detect_layout(state) == "simmim"
    if is_simmim_state and not isinstance(model, SimMIM):
        raise CheckpointError(f"checkpoint {path} is SimMIM pre-training (an encoder and a pixel decoder, no "
                              f"classifier); fine-tune a classifier from it with --pretrained {path}")
    if isinstance(model, SimMIM) and not is_simmim_state:
        raise CheckpointError(f"checkpoint {path} holds a classifier, not SimMIM pre-training; to pre-train from "
                              f"its weights pass --pretrained {path} instead")


def _check_fits(model: nn.Module, state: dict, path: str, hint: str) -> None:
    """Raise a CheckpointError listing the first mismatched keys when `state` does not fit `model`."""
    _check_kind(model, state, path)
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
    """Load `state` into `model`, requiring every parameter, all finite; derived buffers are recomputed, not loaded."""
    _check_fits(model, state, path, hint)
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {path} holds non-finite values in {key}; it is from a run that "
                                  "diverged: pick an earlier checkpoint")
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}, strict=False)


_FROM_LAYOUT = {"timm": from_timm, "torchvision": from_torchvision}


def reference_state(payload: dict, path: str, logger: Optional[logging.Logger]) -> tuple[dict, str]:
    """A checkpoint's model weights in the reference layout, and the layout they came in.

    timm's and torchvision's Swin files (V1 and V2) are converted on load, with a log line; a file
    of another architecture comes back as it is, for the fit check to name what does not fit.
    """
    state, renamed = with_current_v2_names(model_state_from(payload, path))
    if renamed and logger is not None:
        logger.info(f"{path}: {renamed} keys renamed from the early Swin V2 rpe_mlp to cpb_mlp")
    layout = detect_layout(state)
    if layout in _FROM_LAYOUT:
        state = _FROM_LAYOUT[layout](state)
        if logger is not None:
            logger.info(f"{path} holds {layout}'s layout; converted to the reference names")
    return state, layout


def load_pretrained(model: nn.Module, path: str, logger: logging.Logger,
                    class_names: Optional[list[str]] = None) -> set[str]:
    """Fine-tuning start: weights adapted to the model's window, size and classes; nothing else restored. Returns
    the names of the tensors that start from scratch.

    `class_names` are the data's classes: a checkpoint that names its own (one written here) gives its head rows by
    name. A SimMIM pre-training file gives its encoder; a SimMIM model takes the weights into its encoder, and its
    decoder and mask token start afresh.
    """
    payload = load_checkpoint_file(path)
    saved_names = entry_of(payload, path, "class_names")
    names = (saved_names, class_names) if saved_names and class_names else None
    state, layout = reference_state(payload, path, logger)
    if layout == "simmim":
        state = from_simmim(state)
        logger.info(f"{path} is SimMIM pre-training: took its encoder (the encoder. prefix stripped), left out its "
                    "decoder and mask token")
    receiver = model.encoder if isinstance(model, SimMIM) else model
    state = adapt_state_dict(state, receiver, logger, names)
    target = receiver.state_dict()
    fresh = {k for k in ("head.weight", "head.bias", "mask_token") if k in target and k not in state}
    state.update({k: target[k] for k in fresh})
    load_weights(receiver, state, path, "it is from another architecture; pick the config it was trained with")
    started = f"; {', '.join(sorted(fresh))} start from scratch" if fresh else ""
    logger.info(f"loaded pretrained weights from {path}{started}")
    return fresh


def optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter the optimizer holds, in its state-dict numbering."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object,
                   scaler: torch.amp.GradScaler, progress: dict, config: CfgNode) -> dict:
    """The reference checkpoint keys, plus what exact resumption needs; all readable with weights_only."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "optimizer_param_names": optimizer_param_names(model, optimizer),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "config": config.dump(),
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


def _optimizer_state_by_name(saved: dict, saved_names: list[str], model: nn.Module,
                             optimizer: torch.optim.Optimizer) -> dict:
    """The saved per-parameter state renumbered for `optimizer`, matched by parameter name."""
    index_of = {name: i for i, name in enumerate(optimizer_param_names(model, optimizer))}
    state = {index_of[saved_names[i]]: value for i, value in saved["state"].items()
             if 0 <= i < len(saved_names) and saved_names[i] in index_of}
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def _other_parameters(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} has optimizer state for other parameters ({what}); resume it with the "
                           "config it was trained with, or start from its weights with --pretrained")


def _check_moments(state: dict, params: list[nn.Parameter], model: nn.Module, path: str) -> None:
    """Each saved moment is a finite tensor of its parameter's shape: a fused or foreach kernel given another shape
    writes out of bounds (a crash with no message), and a non-finite one would poison every later step."""
    names = {id(p): name for name, p in model.named_parameters()}
    for index, values in state.items():
        if not 0 <= index < len(params):
            raise _other_parameters(path, f"parameter {index} of a model with {len(params)}")
        param = params[index]
        for key, value in values.items():
            if value is None or (not isinstance(value, torch.Tensor) and isinstance(value, (int, float))):
                continue
            if problem := tensor_problem(value):
                raise malformed_entry(path, "optimizer", f"{key} of {names[id(param)]} is {problem}")
            if value.dim() > 0 and value.shape != param.shape:
                raise _other_parameters(path, f"{key} of {names[id(param)]} is {tuple(value.shape)}, the parameter "
                                              f"{tuple(param.shape)}")
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise malformed_entry(path, "optimizer", f"{key} of {names[id(param)]} holds non-finite values")


def restore_optimizer(optimizer: torch.optim.Optimizer, payload: dict, model: nn.Module, path: str) -> None:
    """Load the optimizer's per-parameter state (moments, momentum, step) and keep this run's hyperparameters.

    Our checkpoints name their parameters, so the state follows the names; reference checkpoints
    are matched by position, which our modules' registration order keeps equal to the reference's.
    The group settings (lr, weight decay, betas, fused/foreach kernels) stay those of the current
    config and device: a CPU checkpoint resumed into a fused CUDA optimizer must not turn fusion off.
    """
    saved = payload["optimizer"]
    if "optimizer_param_names" in payload:
        saved = _optimizer_state_by_name(saved, payload["optimizer_param_names"], model, optimizer)
    _check_moments(saved["state"], [p for group in optimizer.param_groups for p in group["params"]], model, path)
    current_groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    saved_groups = saved.get("param_groups")
    if isinstance(saved_groups, list) and len(saved_groups) == len(current_groups):
        # torch places each state tensor by its group's settings (a fused or capturable group keeps `step` on the
        # parameter's device, others on the CPU): the settings must be this run's when it does, not the saving run's.
        saved = {**saved, "param_groups": [{**group, **settings} if isinstance(group, dict) else group
                                           for group, settings in zip(saved_groups, current_groups)]}
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise _other_parameters(path, str(err) or type(err).__name__) from None
    for group, settings in zip(optimizer.param_groups, current_groups):
        group.update(settings)


def restore_scaler(scaler: torch.amp.GradScaler, payload: dict) -> None:
    """The fp16 loss scale, when both this run and the checkpoint use one (a bf16, fp32 or reference file has none)."""
    saved = payload.get("scaler")
    if scaler.is_enabled() and isinstance(saved, dict) and saved:
        scaler.load_state_dict(saved)


@dataclass
class ResumePoint:
    """Where a training checkpoint leaves the run, and what the run had recorded up to there."""

    path: str
    epoch: int  # the epoch to run next
    batches: int  # batches of that epoch already done
    max_accuracy: float = 0.0
    totals: dict = field(default_factory=dict)  # running sums of the unfinished epoch
    history: list = field(default_factory=list)  # one metrics record per finished epoch
    rng: list = field(default_factory=list)  # each rank's random generator states, by rank
    world_size: int = 0  # processes of the run that wrote it (0: unknown)
    config_text: str = ""
    run_index: int = -1  # how many runs of this training came before the one that wrote it (-1: none)


def read_resume_point(path: str, payload: dict) -> ResumePoint:
    """The progress entries of a checkpoint (checked by check_entries); a reference checkpoint continues after its
    epoch."""
    epoch, batches = payload["resume_at"] if "resume_at" in payload else (int(payload.get("epoch", -1)) + 1, 0)
    config_text = payload.get("config", "")
    return ResumePoint(path=path, epoch=int(epoch), batches=int(batches),
                       max_accuracy=float(payload.get("max_accuracy", 0.0)),
                       totals={k: _plain(v) for k, v in payload.get("epoch_totals", {}).items()},
                       history=[{k: _plain(v) for k, v in record.items()} for record in payload.get("metrics_history",
                                                                                                      [])],
                       rng=_rng_states(payload.get("rng", [])),
                       world_size=int(payload.get("world_size", 0)),
                       config_text=config_text if isinstance(config_text, str) else "",
                       run_index=int(payload.get("run_index", 0)))


def _plain(value: object) -> object:
    """A number saved as a one-element tensor, as a Python number."""
    return value.item() if isinstance(value, torch.Tensor) else value


def _rng_states(rng: object) -> list:
    """Each rank's generator states from a checkpoint's `rng` entry (one dict, or a list of them)."""
    return [rng] if isinstance(rng, dict) else list(rng)


def load_model_weights(path: str, model: nn.Module, logger: Optional[logging.Logger] = None) -> dict:
    """Load a checkpoint's model weights into `model` for evaluation or resumption; returns the whole payload.

    The optimizer state of a converted (timm or torchvision) file is left out: it is numbered in
    that tool's parameter order, which is not ours.
    """
    payload = load_checkpoint_file(path)
    state, layout = reference_state(payload, path, logger)
    check_entries(payload, path)
    load_weights(model, state, path, "to start from other weights use --pretrained, which adapts them")
    if layout in _FROM_LAYOUT and "optimizer" in payload:
        payload = {k: v for k, v in payload.items() if k not in ("optimizer", "scaler")}
        if logger is not None:
            logger.warning(f"{path}: the optimizer state of a {layout} file is not restored; the optimizer starts "
                           "afresh")
    return payload
