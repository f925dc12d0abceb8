"""models/pretrained.py: bias tables resize as the reference's do and the 22k head maps to 1k rows as published.
"""

import os

import torch
from conftest import SHARED, requires_shared

from models.pretrained import imagenet22k_to_1k_rows, resize_bias_table


def test_resize_bias_table_is_identity_at_same_size():
    table = torch.randn(49, 3)
    torch.testing.assert_close(resize_bias_table(table, 49), table)


@requires_shared("reference/map22kto1k.txt")
def test_imagenet22k_to_1k_map_equals_the_reference():
    with open(os.path.join(SHARED, "reference", "map22kto1k.txt")) as f:
        expected = [int(line) for line in f.read().split()]
    assert list(imagenet22k_to_1k_rows()) == expected
