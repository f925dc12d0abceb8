"""Freezing parts of a model for fine-tuning: the first stages, or everything but the head (a linear probe).

Frozen parameters stop requiring gradients, so the optimizer, the gradient clipping, DDP and the
EMA all leave them out.
"""

from torch import nn


def frozen_prefixes(num_stages: int, linear_probe: bool) -> tuple[str, ...]:
    """Parameter-name prefixes to freeze: the patch embedding and the first `num_stages` stages, or all but `head.`."""
    if linear_probe:
        return ("",)
    if num_stages == 0:
        return ()
    return ("patch_embed.", "absolute_pos_embed", *(f"layers.{i}." for i in range(num_stages)))


def freeze(model: nn.Module, num_stages: int = 0, linear_probe: bool = False) -> int:
    """Freeze what `frozen_prefixes` names in `model`; returns how many parameters (elements) were frozen."""
    prefixes = frozen_prefixes(num_stages, linear_probe)
    frozen = 0
    for name, param in model.named_parameters():
        if prefixes and name.startswith(prefixes) and not name.startswith("head."):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen
