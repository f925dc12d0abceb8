"""checkpoints/entries.py: every published checkpoint layout passes the entry check; a wrong entry is named.
"""

import argparse

import pytest
import torch
from conftest import TINY_CFG, stepped_optimizer, tiny_model

from checkpoints.entries import check_entries, model_state_from
from config import load_config
from utils import CheckpointError


def _published_layouts() -> dict:
    """What the reference, timm's train.py, torchvision's reference scripts and Lightning save beside the weights."""
    model = tiny_model()
    optimizer = stepped_optimizer(model, fused=False).state_dict()
    scaler = torch.amp.GradScaler("cpu", enabled=True).state_dict()
    weights = model.state_dict()
    config = load_config(TINY_CFG)
    return {
        "reference": {"model": weights, "optimizer": optimizer, "lr_scheduler": {"last_epoch": 3},
                      "max_accuracy": 81.2, "scaler": scaler, "epoch": 299, "config": config},
        "timm": {"epoch": 9, "arch": "swin_tiny_patch4_window7_224", "state_dict": weights, "optimizer": optimizer,
                 "version": 2, "args": argparse.Namespace(lr=1e-3), "metric": 71.5},
        "torchvision": {"model": weights, "optimizer": optimizer, "lr_scheduler": {"last_epoch": 3}, "epoch": 9,
                        "args": argparse.Namespace(lr=1e-3), "scaler": scaler},
        "lightning": {"epoch": 9, "global_step": 900, "state_dict": weights, "optimizer_states": [optimizer],
                      "lr_schedulers": [{}], "hyper_parameters": {"lr": 1e-3}},
        "bf16 run": {"model": weights, "optimizer": optimizer, "scaler": {}, "epoch": torch.tensor(3),
                     "max_accuracy": torch.tensor(50.0), "class_names": None},
    }


@pytest.mark.parametrize("layout", ["reference", "timm", "torchvision", "lightning", "bf16 run"])
def test_the_entry_check_takes_every_published_checkpoint_layout(layout):
    payload = _published_layouts()[layout]
    check_entries(payload, f"{layout}.pth")
    assert set(model_state_from(payload, f"{layout}.pth")) == set(tiny_model().state_dict())


@pytest.mark.parametrize("entry, value, words", [
    ("max_accuracy", torch.tensor(float("inf")), "max_accuracy entry"),
    ("epoch", 3.5, "epoch entry"),
    ("scaler", {"scale": -1.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 1,
                "_growth_tracker": 0}, "scaler entry"),
    ("rng", [{"python": 1}], "rng entry"),
    ("model_ema", {"head.weight": "zeros"}, "a str, not a tensor in its model_ema entry at head.weight"),
])
def test_the_entry_check_names_the_entry_that_is_wrong(entry, value, words):
    with pytest.raises(CheckpointError, match=words):
        check_entries({**_published_layouts()["reference"], entry: value}, "x.pth")
