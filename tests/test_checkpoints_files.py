"""checkpoints/files.py: a checkpoint is read without running code, in full (the reference's too), and written
atomically, so a full disk keeps the previous one.
"""

import argparse
import os

import numpy as np
import pytest
import torch
from yacs.config import CfgNode

from checkpoints.files import load_checkpoint_file
from utils import CheckpointError


class _WritesAFile:
    """Pickles as a call to open(): unpickling it would create `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_reference_checkpoint_with_its_config_and_numpy_scalars_is_read_in_full(tmp_path):
    path = str(tmp_path / "reference.pth")
    config = CfgNode({"MODEL": CfgNode({"TYPE": "swin", "DEPTHS": [2, 2]})})
    torch.save({"model": {"w": torch.ones(2)}, "config": config, "max_accuracy": np.float64(81.2),
                "args": argparse.Namespace(cfg="x.yaml"), "seen": np.arange(3)}, path)
    payload = load_checkpoint_file(path)
    assert payload["config"].MODEL.DEPTHS == [2, 2] and payload["max_accuracy"] == 81.2
    assert payload["args"].cfg == "x.yaml" and payload["seen"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("extra", ["alone", "beside a config"])
def test_a_checkpoint_that_would_run_code_when_read_is_refused_unrun(extra, tmp_path):
    path, marker = str(tmp_path / "evil.pth"), str(tmp_path / "ran")
    payload = {"model": {"w": torch.ones(2)}, "hook": _WritesAFile(marker)}
    if extra == "beside a config":
        payload["config"] = CfgNode({"MODEL": CfgNode({"TYPE": "swin"})})
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth cannot be read: it pickles code from elsewhere \(.*open"):
        load_checkpoint_file(path)
    assert not os.path.exists(marker)


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary(small_disk):
    from checkpoints.files import save_checkpoint
    from utils import UserError

    save_checkpoint({"x": torch.zeros(10)}, str(small_disk / "ckpt.pth"))
    with pytest.raises(UserError, match=r"no space left on the device of .*ckpt\.pth"):
        save_checkpoint({"x": torch.zeros(1_000_000)}, str(small_disk / "ckpt.pth"))
    assert os.listdir(small_disk) == ["ckpt.pth"]
    assert torch.load(small_disk / "ckpt.pth", weights_only=True)["x"].shape == (10,)
