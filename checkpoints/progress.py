"""A training checkpoint's state beside the weights, written and read here alone: the optimizer, schedule and loss
scale, and the run's progress (where it stopped, what it recorded, every rank's random states)."""

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from yacs.config import CfgNode

from checkpoints.entries import malformed_entry, tensor_problem
from checkpoints.files import save_checkpoint
from checkpoints.run_folder import BEST_CHECKPOINT, checkpoint_name
from utils import CheckpointError


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
    """Write the checkpoint for `payload["resume_at"]` (and the best one, when it is the best so far), atomically,
    under the run folder's names (checkpoint_name)."""
    path = os.path.join(output_dir, checkpoint_name(*payload["resume_at"]))
    save_checkpoint(payload, path)
    if is_best:
        save_checkpoint(payload, os.path.join(output_dir, BEST_CHECKPOINT))
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
    class_names: Optional[list[str]] = None  # the classes the head answers for, in its order


def progress_entries(point: ResumePoint) -> dict:
    """The checkpoint entries that record `point` (the reference's `epoch` and `max_accuracy` among them), as
    read_resume_point reads them back; a point at an epoch's end carries no running sums."""
    return {"epoch": point.epoch - 1, "resume_at": [point.epoch, point.batches], "max_accuracy": point.max_accuracy,
            "class_names": point.class_names, "rng": point.rng, "world_size": point.world_size,
            "metrics_history": point.history, "epoch_totals": dict(point.totals) if point.batches else {},
            "run_index": point.run_index}


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
                       run_index=int(payload.get("run_index", 0)),
                       class_names=payload.get("class_names"))


def _plain(value: object) -> object:
    """A number saved as a one-element tensor, as a Python number."""
    return value.item() if isinstance(value, torch.Tensor) else value


def _rng_states(rng: object) -> list:
    """Each rank's generator states from a checkpoint's `rng` entry (one dict, or a list of them)."""
    return [rng] if isinstance(rng, dict) else list(rng)
