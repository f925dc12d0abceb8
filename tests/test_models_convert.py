"""models/convert.py: state dicts convert to timm's and torchvision's layouts and back without loss.
"""

import logging
import os

import timm
import torch
import torchvision
from conftest import ROOT, TINY_CFG, logits_of

from checkpoints.weights import load_pretrained
from config import load_config
from models import build_model
from models.convert import from_timm, from_torchvision, to_timm, to_torchvision
from tools import convert


def swin_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(os.path.join(ROOT, "configs", "swin_tiny.yaml"))).eval()


def test_convert_to_timm_and_back():
    model = swin_tiny()
    theirs = timm.create_model("swin_tiny_patch4_window7_224").eval()
    theirs.load_state_dict(to_timm(model.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), atol=1e-5, rtol=1e-5)
    back = from_timm(theirs.state_dict())
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith(("relative_position_index", "attn_mask"))}
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


def test_convert_to_torchvision_and_back(tmp_path):
    model = swin_tiny()
    theirs = torchvision.models.swin_t().eval()
    theirs.load_state_dict(to_torchvision(model.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), atol=1e-5, rtol=1e-5)
    torch.save(theirs.state_dict(), tmp_path / "tv.pth")
    assert convert.main(["--from", "torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "ours.pth")]) == 0
    again = swin_tiny()
    for param in again.parameters():
        param.data.zero_()
    state = torch.load(tmp_path / "ours.pth", weights_only=True)["model"]
    again.load_state_dict(state, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=1e-5)
    assert from_torchvision(to_torchvision(model.state_dict())).keys() == \
        {k for k in model.state_dict() if not k.endswith(("attn_mask", "relative_position_index"))}


def test_converted_layouts_round_trip_into_the_tiny_model(tmp_path, caplog):
    torch.manual_seed(0)
    source = build_model(load_config(TINY_CFG)).eval()

    def prefixed(prefix: str) -> dict:
        return {"model": {f"{prefix}{k}": v for k, v in source.state_dict().items()}}

    for name, state in (("timm", {"state_dict": to_timm(source.state_dict())}),
                        ("tv", {"model": to_torchvision(source.state_dict())}),
                        ("ddp", prefixed("module.")), ("compiled", prefixed("_orig_mod.")),
                        ("compiled_ddp", prefixed("module._orig_mod.")),
                        ("ddp_compiled", prefixed("_orig_mod.module."))):
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        target = build_model(load_config(TINY_CFG))
        load_pretrained(target, str(path), logging.getLogger("test"))
        torch.testing.assert_close(logits_of(target, 32), logits_of(source, 32), atol=0, rtol=0)
