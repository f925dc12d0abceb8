import json
import os
import zipfile

import pytest
import timm
import torch
import torchvision
from conftest import DATASETS, ROOT, TINY_CFG, requires_dataset, run_main
from PIL import Image
from timm.data import ImageNetInfo

from config import load_config
from models import build_model
from models.convert import from_timm, from_torchvision, to_timm, to_torchvision
from tools import convert, export, plot_metrics, predict, summary


def swin_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(os.path.join(ROOT, "configs", "swin_tiny.yaml"))).eval()


@requires_dataset("imagenet-samples")
def test_predict_names_imagenet_classes_for_a_1000_class_model(tmp_path, capsys):
    out = tmp_path / "preds.json"
    code = predict.main([os.path.join(DATASETS, "imagenet-samples", "val"), "--cfg", TINY_CFG, "--output", str(out),
                         "--random-weights", "--batch-size", "100", "--opts", "MODEL.NUM_CLASSES", "1000",
                         "DATA.IMG_SIZE", "64"])
    assert code == 0
    rows = json.load(open(out))
    info = ImageNetInfo("imagenet-1k")
    assert len(rows) == 1000 and all(len(row["top"]) == 5 for row in rows)
    for row in rows[::97]:
        for entry in row["top"]:
            assert entry["name"] == info.index_to_description(entry["index"])
        assert sorted((e["prob"] for e in row["top"]), reverse=True) == [e["prob"] for e in row["top"]]
    captured = capsys.readouterr()
    assert "n01440764_tench.JPEG" in captured.out
    # how the model was prepared comes after the progress and the results, so that an error would be the only line
    assert captured.err.splitlines()[-1] == "inference on CPU: 18 linear layers on oneDNN's kernel (TEST.COMPILE off " \
                                            "keeps ATen's)"


@requires_dataset("cifar10")
def test_predict_names_the_classes_stored_in_a_checkpoint_trained_here(tmp_path):
    with zipfile.ZipFile(os.path.join(DATASETS, "cifar10", "val.zip")) as archive:
        for name in [n for n in archive.namelist() if n.endswith(".jpg") and int(n.split("/")[1][:4]) < 4]:
            for split in ("train", "val"):
                archive.extract(name, tmp_path / "data" / split)
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", str(tmp_path / "data"),
                      "--batch-size", "4", "--opts", "DATA.DATASET", "'imagenet'", "TRAIN.EPOCHS", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = os.path.join(tmp_path, "out", "swin_tiny_test", "default", "ckpt_epoch_1.pth")
    out = tmp_path / "preds.csv"
    assert predict.main([str(tmp_path / "data" / "val" / "cat"), "--cfg", TINY_CFG, "--resume", ckpt, "--topk", "3",
                         "--output", str(out)]) == 0
    lines = open(out).read().splitlines()
    cifar = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    assert lines[0] == "path,rank,index,name,prob" and len(lines) == 1 + 4 * 3
    assert {line.split(",")[3] for line in lines[1:]} <= cifar


def test_predict_bad_input_is_one_line(tmp_path, capsys):
    assert predict.main([str(tmp_path / "none*.jpg"), "--cfg", TINY_CFG]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")


def test_plot_of_a_short_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": e, "train_loss": 2.0 - 0.3 * e, "val_loss": 2.1 - 0.3 * e, "val_top1": 20.0 + 10 * e,
                "val_top5": 60.0 + 5 * e, "lr": 1e-3 * (1 - e / 4)} for e in range(4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records + records[-1:]))
    assert plot_metrics.main([str(run)]) == 0
    image = Image.open(run / "curves.png")
    assert image.size == (1400, 400)
    assert len(plot_metrics.read_metrics(str(run))) == 4
    assert plot_metrics.main([str(tmp_path / "missing")]) == 2


def test_summary_lists_every_stage(capsys):
    assert summary.main(["--cfg", os.path.join(ROOT, "configs", "swin_tiny.yaml")]) == 0
    text = capsys.readouterr().out
    assert "28,288,354 parameters, 4.49 GMACs at 224x224" in text
    assert [line.split()[:3] for line in text.splitlines()[2:]] == [["0", "56x56", "96"], ["1", "28x28", "192"],
                                                                   ["2", "14x14", "384"], ["3", "7x7", "768"]]


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
