"""tools/convert.py: timm weights converted to torchvision's layout load there strictly.
"""

import os

import pytest
import timm
import torch
import torchvision
from conftest import ROOT

from config import load_config
from models import build_model
from tools import convert


@pytest.mark.parametrize("family", ["swin_t", "swin_v2_t"])
def test_timm_weights_converted_to_torchvision_load_there_strictly(family, tmp_path, capsys):
    """timm's state dicts leave the index buffers out; torchvision's keep them, so the two-step conversion must
    write them (V1 from its bias tables; V2 from the coordinate tables a checkpoint of ours holds)."""
    timm_name, cfg = {"swin_t": ("swin_tiny_patch4_window7_224", "swin_tiny.yaml"),
                      "swin_v2_t": ("swinv2_tiny_window8_256", "swinv2/swinv2_tiny_patch4_window8_256.yaml")}[family]
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name).eval()
    torch.save(theirs.state_dict(), tmp_path / "timm.pth")
    assert convert.main(["--from", "timm", str(tmp_path / "timm.pth"), str(tmp_path / "ours.pth")]) == 0
    if family == "swin_v2_t":  # timm's V2 file cannot tell the windows: one line; our own checkpoint can
        assert convert.main(["--to", "torchvision", str(tmp_path / "ours.pth"), str(tmp_path / "tv.pth")]) == 2
        assert "relative_coords_table" in capsys.readouterr().err and not os.path.exists(tmp_path / "tv.pth")
        ours = build_model(load_config(os.path.join(ROOT, "configs", cfg))).eval()
        ours.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True)["model"], strict=False)
        torch.save({"model": ours.state_dict()}, tmp_path / "ours.pth")
    assert convert.main(["--to", "torchvision", str(tmp_path / "ours.pth"), str(tmp_path / "tv.pth")]) == 0
    target = getattr(torchvision.models, family)().eval()
    target.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)
    size = 256 if family == "swin_v2_t" else 224
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(target(x), theirs(x), atol=1e-4, rtol=1e-4)
