"""Adapt published weights to a model of another window, size or class count, for fine-tuning.

Relative position bias tables and the absolute position embedding are resized bicubically;
a head whose classes the checkpoint names is mapped to the data's classes by name; a 21841-class
ImageNet-22k head becomes a 1000-class head by picking the rows of the 1k classes; any other
class-count mismatch leaves the new head at its initialisation.
"""

import logging
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Buffers that the model recomputes for its own window and size; never taken from a file.
DERIVED_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table")
_IMAGENET22K_CLASSES = 21841
_IMAGENET1K_CLASSES = 1000
# Teddy bear (n04399382, 1k class 850) is missing from the 22k wnid list; the reference maps it to this row.
_TEDDY_BEAR_1K_INDEX, _TEDDY_BEAR_22K_ROW = 850, 5564


@lru_cache(maxsize=1)
def imagenet22k_to_1k_rows() -> tuple[int, ...]:
    """For each ImageNet-1k class, the row of the ImageNet-22k head that predicts it.

    Derived from the wnid lists timm installs: a 1k wnid's position in the sorted 22k list.
    """
    from timm.data import ImageNetInfo

    info_1k, info_22k = ImageNetInfo("imagenet-1k"), ImageNetInfo("imagenet-21k")
    rows_22k = {wnid: i for i, wnid in enumerate(sorted(info_22k.label_names()))}
    rows = [rows_22k.get(wnid, -1) for wnid in info_1k.label_names()]
    rows[_TEDDY_BEAR_1K_INDEX] = _TEDDY_BEAR_22K_ROW
    return tuple(rows)


def resize_bias_table(table: torch.Tensor, new_rows: int) -> torch.Tensor:
    """A (2W-1)^2 x nH relative position bias table resized bicubically to `new_rows` rows."""
    old_side, new_side = round(table.shape[0] ** 0.5), round(new_rows**0.5)
    grid = table.permute(1, 0).reshape(1, -1, old_side, old_side)  # 1, nH, S, S
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(-1, new_side * new_side).permute(1, 0)  # S'*S', nH


def resize_position_embedding(embed: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """A 1 x L x C absolute position embedding resized bicubically to `new_tokens` tokens."""
    old_side, new_side = round(embed.shape[1] ** 0.5), round(new_tokens**0.5)
    grid = embed.reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2)  # 1, C, S, S
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, -1)  # 1, S'*S', C


def _head_by_name(state: dict, names: tuple[list[str], list[str]], new: int, logger: logging.Logger) -> bool:
    """Rows of a head whose classes the checkpoint names, picked by name for the data's classes (same classes in
    another order, or some of them); the head is dropped, to start from scratch, when the data has a class the
    checkpoint does not know. False where the names do not describe the two heads, to adapt by size instead."""
    saved, wanted = names
    old = state["head.weight"].shape[0]
    if len(saved) != old or len(wanted) != new:
        return False
    row_of = {name: row for row, name in enumerate(saved)}
    unknown = [name for name in wanted if name not in row_of]
    if unknown:
        del state["head.weight"], state["head.bias"]
        logger.info(f"head.weight, head.bias: the data has class {unknown[0]!r}, which the checkpoint's {old} classes "
                    "do not include; the head starts from scratch")
        return True
    rows = [row_of[name] for name in wanted]
    if rows != list(range(old)):
        state["head.weight"], state["head.bias"] = state["head.weight"][rows], state["head.bias"][rows]
        logger.info(f"head.weight, head.bias: took the checkpoint's rows for the data's {new} classes by name")
    return True


def _adapt_head(state: dict, target: dict, logger: logging.Logger,
                names: Optional[tuple[list[str], list[str]]]) -> None:
    if "head.weight" not in state or "head.weight" not in target:
        state.pop("head.weight", None)
        state.pop("head.bias", None)
        return
    weight, bias = state["head.weight"], state.get("head.bias")
    if bias is None or weight.dim() != 2 or bias.shape != weight.shape[:1]:
        return  # not a linear classifier's pair: the fit check names what does not fit
    old, new = weight.shape[0], target["head.weight"].shape[0]
    if names is not None and _head_by_name(state, names, new, logger):
        return
    if old == new:
        return
    if old == _IMAGENET22K_CLASSES and new == _IMAGENET1K_CLASSES:
        rows = torch.tensor(imagenet22k_to_1k_rows())
        state["head.weight"], state["head.bias"] = state["head.weight"][rows], state["head.bias"][rows]
        logger.info(f"head.weight, head.bias: mapped the ImageNet-22k classifier ({old} rows) to the 1,000 "
                    "ImageNet-1k classes")
        return
    del state["head.weight"], state["head.bias"]
    logger.info(f"head.weight, head.bias: the checkpoint has {old} classes and the model {new}; the head starts "
                "from scratch")


def _is_grid(shape: torch.Size, wanted: torch.Size, axis: int) -> bool:
    """Whether `shape` differs from `wanted` only in `axis`, which counts a square grid's cells in both."""
    if len(shape) != len(wanted) or any(a != b for i, (a, b) in enumerate(zip(shape, wanted)) if i != axis):
        return False
    return all(n > 0 and round(n**0.5) ** 2 == n for n in (shape[axis], wanted[axis]))


def adapt_state_dict(state: dict, model: nn.Module, logger: logging.Logger,
                     class_names: Optional[tuple[list[str], list[str]]] = None) -> dict:
    """`state` reshaped to fit `model`: derived buffers dropped, tables and embeddings resized, head mapped.

    `class_names` (the checkpoint's classes, the data's), where both are known, map the head by name: a head kept by
    size alone would answer in the checkpoint's class order while the data numbers its classes otherwise.
    """
    target = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}
    for key, value in list(state.items()):
        if key not in target or target[key].shape == value.shape:
            continue
        wanted = target[key].shape
        if key.endswith("relative_position_bias_table") and _is_grid(value.shape, wanted, 0):
            state[key] = resize_bias_table(value, wanted[0])
        elif key == "absolute_pos_embed" and value.dim() == 3 and value.shape[0] == 1 and _is_grid(value.shape,
                                                                                                     wanted, 1):
            state[key] = resize_position_embedding(value, wanted[1])
        else:
            continue  # a shape no resizing explains: the fit check names it
        logger.info(f"resized {key} {tuple(value.shape)} -> {tuple(target[key].shape)} (bicubic)")
    _adapt_head(state, target, logger, class_names)
    return state
