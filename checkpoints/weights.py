"""The weights of a checkpoint: read in the reference layout (timm's and torchvision's converted), checked to fit
the model and finite, and loaded as they are (resume, evaluation, tools) or adapted (--pretrained)."""

import logging
from typing import Optional

import torch
from torch import nn

from checkpoints.entries import check_entries, entry_of, model_state_from
from checkpoints.files import load_checkpoint_file
from models.convert import (
    detect_layout,
    from_simmim,
    from_timm,
    from_torchvision,
    with_current_v2_names,
)
from models.pretrained import DERIVED_BUFFERS, adapt_state_dict
from models.simmim import SimMIM
from utils import CheckpointError


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


def read_checkpoint(path: str, logger: Optional[logging.Logger] = None) -> tuple[dict, dict, str]:
    """A whole checkpoint, read safely, its entries checked: (payload, model weights in the reference layout, the
    layout they came in). Every reader of weights to be used as they are starts here."""
    payload = load_checkpoint_file(path)
    state, layout = reference_state(payload, path, logger)
    check_entries(payload, path)
    return payload, state, layout


def head_classes(state: dict) -> Optional[int]:
    """The class count of the weights' classifier (None without one)."""
    return state["head.weight"].shape[0] if "head.weight" in state else None


def load_model_weights(path: str, model: nn.Module, logger: Optional[logging.Logger] = None) -> dict:
    """Load a checkpoint's model weights into `model` for evaluation or resumption; returns the whole payload.

    The optimizer state of a converted (timm or torchvision) file is left out: it is numbered in
    that tool's parameter order, which is not ours.
    """
    payload, state, layout = read_checkpoint(path, logger)
    load_weights(model, state, path, "to start from other weights use --pretrained, which adapts them")
    if layout in _FROM_LAYOUT and "optimizer" in payload:
        payload = {k: v for k, v in payload.items() if k not in ("optimizer", "scaler")}
        if logger is not None:
            logger.warning(f"{path}: the optimizer state of a {layout} file is not restored; the optimizer starts "
                           "afresh")
    return payload
