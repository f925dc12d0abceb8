"""models/window_ops.py: the shifted windows are one gather equal to the reference's roll and partition.
"""

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_model

from models.window_ops import from_windows, to_windows, window_partition, window_reverse


@pytest.mark.parametrize("size, window, shift", [((8, 8), 4, 2), ((12, 20), 4, 2), ((56, 56), 7, 3), ((6, 6), 3, 1)])
def test_shifted_windows_by_one_gather_are_the_roll_and_partition(size, window, shift):
    """to_windows / from_windows (one index_select each way) against the reference's roll + partition, bitwise."""
    block = SimpleNamespace(shift_size=shift, window_size=window, input_resolution=(0, 0), window_order=None)
    x = torch.randn(3, *size, 5, generator=torch.Generator().manual_seed(7))  # B, H, W, C
    expected = window_partition(torch.roll(x, shifts=(-shift, -shift), dims=(1, 2)), window)
    windows = to_windows(block, x)
    assert torch.equal(windows, expected)
    assert torch.equal(from_windows(block, windows * 2, *size), torch.roll(
        window_reverse(expected * 2, window, *size), shifts=(shift, shift), dims=(1, 2)))


def test_the_stored_window_orders_are_used_at_the_configured_size_and_stay_out_of_the_state_dict():
    model = tiny_model().eval()
    block = model.layers[0].blocks[1]
    assert block.window_order is not None and model.layers[0].blocks[0].window_order is None
    assert not any("window_order" in key or "window_inverse" in key for key in model.state_dict())
    x = torch.randn(2, 8, 8, 16)
    assert torch.equal(to_windows(block, x), window_partition(torch.roll(x, (-2, -2), (1, 2)), 4))
