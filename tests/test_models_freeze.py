"""models/freeze.py: a frozen fine-tune changes only what it trains.
"""

import pytest
import torch
from conftest import TINY_CFG, run_main

from config import load_config
from models import build_model


@pytest.mark.parametrize("how", ["stages", "probe"])
def test_a_frozen_fine_tune_changes_only_what_it_trains(how, tmp_path):
    torch.manual_seed(0)
    source = build_model(load_config(TINY_CFG))
    torch.save({"model": source.state_dict()}, tmp_path / "start.pth")
    opts = ["TRAIN.FREEZE_STAGES", "1"] if how == "stages" else ["TRAIN.LINEAR_PROBE", "True"]
    result = run_main("--cfg", TINY_CFG, "--pretrained", str(tmp_path / "start.pth"), "--output", str(tmp_path),
                      "--opts", *opts, "TRAIN.EMA_DECAY", "0.9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "frozen: " in result.stdout
    payload = torch.load(tmp_path / "swin_tiny_test" / "default" / "ckpt_epoch_1.pth", weights_only=True)
    trained = {"stages": ("layers.1.", "norm.", "head."), "probe": ("head.",)}[how]
    for name, start in source.state_dict().items():
        if not start.is_floating_point():
            continue
        moved = not torch.equal(payload["model"][name], start)
        assert moved == name.startswith(trained), name
        assert torch.equal(payload["model_ema"][name], start) or name.startswith(trained), name
    assert set(payload["optimizer_param_names"]) == {n for n, _ in source.named_parameters() if n.startswith(trained)}
