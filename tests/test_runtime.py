"""The runtime's process-wide numeric switches follow the config, not a fixed choice."""

import pytest
import torch
from conftest import TINY_CFG

from config import load_config
from runtime import init_runtime, shutdown_runtime


@pytest.fixture
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("allowed", [True, False])
def test_tf32_follows_the_config_key_so_fp32_runs_stay_fp32(allowed, restore_tf32):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not allowed
    rt = init_runtime(load_config(TINY_CFG, ["ALLOW_TF32", str(allowed), "DEVICE", "cpu"]))
    try:
        assert torch.backends.cuda.matmul.allow_tf32 is allowed and torch.backends.cudnn.allow_tf32 is allowed
        assert rt.describe() == "device cpu, rank 0 of 1, precision fp32"
    finally:
        shutdown_runtime(rt)
