"""What each entry of a checkpoint must hold, checked once where a checkpoint is read for more than its weights.

A checkpoint is user input: one written by hand, by another tool or by a damaged copy can hold an
entry of the wrong type, which would otherwise surface as a traceback (or, for optimizer moments,
as a crash inside a fused kernel) far from where it was read. Each check names the entry and what
it should hold; entries this tool does not read are left alone, so other tools' checkpoints load.
"""

import math
from typing import Callable

import torch

from utils import CheckpointError

_REAL_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                torch.bfloat16, torch.float32, torch.float64)


def tensor_problem(value: object) -> str:
    """Why `value` is not a dense real tensor in memory ('' when it is): weights and optimizer moments must be."""
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided:
        return f"a {str(value.layout).replace('torch.', '')} tensor, not a dense one"
    if value.is_meta:
        return "a tensor without data (on the meta device)"
    if value.dtype not in _REAL_DTYPES:
        return f"a {str(value.dtype).replace('torch.', '')} tensor, not a real-valued one"
    return ""


def check_tensors(state: dict, path: str, entry: str) -> None:
    """Every value of the state dict `entry` is a dense real tensor, or one CheckpointError naming the first that is
    not."""
    for key, value in state.items():
        if problem := tensor_problem(value):
            raise CheckpointError(f"checkpoint {path} has {problem} in its {entry} entry at {key}; it is not a "
                                  "model's state dict: pass a checkpoint saved as {'model': state_dict}")


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def model_state_from(payload: dict, path: str) -> dict:
    """The model weights of a checkpoint, each a dense real tensor: its 'model' (reference) or 'state_dict' (timm,
    Lightning) entry, or the dict itself when it is a bare state dict; the prefixes of wrappers that saved
    themselves (`module.` of DDP, `_orig_mod.` of torch.compile, in either order) are dropped."""
    wrapped = [(key, payload[key]) for key in ("model", "state_dict") if isinstance(payload.get(key), dict)]
    entry, state = wrapped[0] if wrapped else ("model", payload)
    if not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no model weights (no 'model' state dict)")
    odd_key = next((key for key in state if not isinstance(key, str)), None)
    if odd_key is not None:
        raise CheckpointError(f"checkpoint {path} has a weight named {odd_key!r}, not a parameter name; it is not a "
                              "model's state dict")
    check_tensors(state, path, entry)
    while prefix := next((p for p in _WRAPPER_PREFIXES if all(key.startswith(p) for key in state)), None):
        state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1
                                                and tensor_problem(value) == "")


def _integer(value: object) -> bool:
    return isinstance(value, int) or (isinstance(value, torch.Tensor) and value.numel() == 1
                                      and not value.is_floating_point() and tensor_problem(value) == "")


def _strings(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


def _position(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_integer(v) and int(v) >= 0 for v in value)


def _record(value: object) -> bool:
    return (isinstance(value, dict) and _integer(value.get("epoch"))
            and all(isinstance(k, str) and (v is None or _number(v)) for k, v in value.items()))


def _optimizer_state(value: object) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("state", {}), dict)
            and isinstance(value.get("param_groups", []), list)
            and all(isinstance(k, int) and isinstance(v, dict) for k, v in value.get("state", {}).items())
            and all(isinstance(group, dict) for group in value.get("param_groups", [])))


def _scaler_state(value: object) -> bool:
    """Empty (no fp16 loss scaling) or GradScaler's numbers, the scale positive and finite."""
    if value is None or value == {}:
        return True
    return (isinstance(value, dict) and _number(value.get("scale")) and 0 < float(value["scale"]) < math.inf
            and all(_number(value.get(k)) for k in ("growth_factor", "backoff_factor", "growth_interval",
                                                    "_growth_tracker")))


def _rng_states(value: object) -> bool:
    states = [value] if isinstance(value, dict) else value
    return isinstance(states, list) and all(isinstance(s, dict) and {"python", "numpy", "torch"} <= s.keys()
                                            for s in states)


_ENTRIES: dict[str, tuple[Callable[[object], bool], str]] = {
    "class_names": (lambda v: v is None or _strings(v), "a list of class names"),
    "optimizer": (_optimizer_state, "an optimizer state dict ('state' by parameter number, 'param_groups')"),
    "optimizer_param_names": (_strings, "a list of parameter names"),
    "scaler": (_scaler_state, "a loss scaler's state (a positive scale and its growth settings)"),
    "resume_at": (_position, "a pair [epoch, batches] of non-negative integers"),
    "epoch": (lambda v: _integer(v) and int(v) >= -1, "an epoch number"),
    "max_accuracy": (lambda v: _number(v) and math.isfinite(float(v)), "a finite number"),
    "epoch_totals": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _number(n) for k, n in v.items()),
                     "running sums by name"),
    "metrics_history": (lambda v: isinstance(v, list) and all(_record(r) for r in v),
                        "a list of per-epoch records, each with its epoch and numbers"),
    "rng": (_rng_states, "each process's random generator states"),
    "world_size": (lambda v: _integer(v) and int(v) >= 0, "a number of processes"),
    "run_index": (lambda v: _integer(v) and int(v) >= -1, "a count of earlier runs"),
    "config": (lambda v: isinstance(v, (str, dict)), "the config as YAML text"),
    "model_ema": (lambda v: isinstance(v, dict), "a state dict of EMA weights"),
}


def malformed_entry(path: str, entry: str, what: str) -> CheckpointError:
    """The one error for an entry beside the weights (progress, optimizer, random states, names) that cannot be used."""
    return CheckpointError(f"checkpoint {path} has a malformed {entry} entry ({what[:100]}); use another checkpoint, "
                           "or take its weights alone with main.py --pretrained")


def entry_of(payload: dict, path: str, entry: str) -> object:
    """`payload[entry]` (None where absent), checked as check_entries checks it, for a reader that needs one entry."""
    check_entries({entry: payload[entry]} if entry in payload else {}, path)
    return payload.get(entry)


def check_entries(payload: dict, path: str) -> None:
    """One CheckpointError naming the first entry this tool reads (progress, optimizer, class names, EMA) that does
    not hold what it should."""
    for entry, (holds, what) in _ENTRIES.items():
        if entry in payload and not holds(payload[entry]):
            raise malformed_entry(path, entry, f"it should hold {what}, not this {type(payload[entry]).__name__}")
    if isinstance(payload.get("model_ema"), dict):
        check_tensors(payload["model_ema"], path, "model_ema")
