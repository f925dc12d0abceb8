"""tools/predict.py: class names from ImageNet or the checkpoint, the model from the checkpoint alone.
"""

import json
import os
import zipfile

import torch
from conftest import CLASS_RUN_NAMES, CLASS_RUN_OPTS, DATASETS, TINY_CFG, requires_dataset, run_main
from timm.data import ImageNetInfo

from tools import export, predict, summary


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


def test_predict_export_and_summary_from_the_checkpoint_alone_equal_cfg_and_opts(class_run, tmp_path, capsys):
    val = os.path.join(class_run["data"], "val")
    with_cfg = ["--cfg", TINY_CFG, "--opts", *CLASS_RUN_OPTS]
    outputs = {}
    for name, extra in (("alone", []), ("cfg", with_cfg)):
        path = str(tmp_path / f"{name}.json")
        assert predict.main([val, "--resume", class_run["ckpt"], "--output", path, "--device", "cpu", *extra]) == 0
        outputs[name] = json.load(open(path))
        assert export.main(["--resume", class_run["ckpt"], "--format", "torchscript", "--output",
                            str(tmp_path / f"{name}.pt"), *extra]) == 0
        capsys.readouterr()
        assert summary.main(["--resume", class_run["ckpt"], *extra]) == 0
        outputs[name + " summary"] = capsys.readouterr().out
    assert outputs["alone"] == outputs["cfg"]
    assert {e["name"] for row in outputs["alone"] for e in row["top"]} <= set(CLASS_RUN_NAMES)
    assert outputs["alone summary"] == outputs["cfg summary"] and "24" in outputs["alone summary"]
    images = torch.randn(2, 3, 32, 32)
    first, second = (torch.jit.load(str(tmp_path / f"{n}.pt"))(images) for n in ("alone", "cfg"))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
