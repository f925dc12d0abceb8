"""tools/export.py: the exported model answers as the eager one and the tool lists what it wrote.
"""

import os

import pytest
import torch
from conftest import TINY_CFG

from config import load_config
from models import build_model
from tools import export


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "export"])
def test_export_runs_and_matches_eager(fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")
    torch.manual_seed(0)
    model = build_model(load_config(TINY_CFG)).eval()
    path = str(tmp_path / f"tiny.{fmt}")
    export.export(model, torch.randn(2, 3, 32, 32), fmt, path)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(export.run_exported(fmt, path, images), model(images), atol=1e-4, rtol=1e-4)


def test_export_cli_reports_the_difference(tmp_path, capsys):
    assert export.main(["--cfg", TINY_CFG, "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 0
    assert "logit difference on 3 images" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_writes_one_file_and_lists_it(fmt, class_run, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")
    name = f"m.{fmt}"
    assert export.main(["--resume", class_run["ckpt"], "--format", fmt, "--output", str(tmp_path / name)]) == 0
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert os.listdir(tmp_path) == [name] and wrote == [f"wrote {tmp_path / name} "
                                                        f"({os.path.getsize(tmp_path / name) / 2**20:.1f} MB)"]
