"""data/simmim.py: SimMIM's masks hide the ratio of mask patches as whole squares.
"""

import math

import pytest
import torch

from data.simmim import MaskGenerator


@pytest.mark.parametrize("size, mask_patch, model_patch, ratio", [(192, 32, 4, 0.6), (32, 8, 4, 0.6),
                                                                  (32, 4, 2, 0.75), (224, 32, 4, 0.5)])
def test_masks_hide_the_ratio_of_mask_patches_as_whole_squares(size, mask_patch, model_patch, ratio):
    torch.manual_seed(0)
    generator = MaskGenerator(size, mask_patch, model_patch, ratio)
    cells, scale = size // mask_patch, mask_patch // model_patch
    hidden = math.ceil(cells * cells * ratio)  # the reference's int(np.ceil(count * ratio)): 22 of 36 at 192/32
    draws = torch.stack([generator() for _ in range(1000)])
    assert draws.shape == (1000, size // model_patch, size // model_patch) and draws.dtype == torch.bool
    blocks = draws.view(1000, cells, scale, cells, scale)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # constant inside each mask patch
    per_cell = blocks[:, :, 0, :, 0]
    assert (per_cell.flatten(1).sum(1) == hidden).all()
    assert len({mask.numpy().tobytes() for mask in per_cell[:50]}) >= 45  # a fresh layout each draw
    frequency = per_cell.float().mean(0)  # every cell hidden about as often as any other
    assert (frequency - hidden / cells**2).abs().max() < 0.08
