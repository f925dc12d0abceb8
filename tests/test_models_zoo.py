"""models/zoo.py: the reference's published weights by name, with their configs; a local file of that name wins.
"""

import csv
import os

import torch
import torchvision
from conftest import ROOT, SHARED, TINY_CFG, assert_user_error, requires_shared, run_main

from checkpoints import download
from config import config_from_weights, load_config
from models import build_model, zoo
from tools import predict


def test_a_file_named_like_a_zoo_entry_is_the_file(tmp_path, monkeypatch):
    """--resume NAME.pth where a file of that name exists: the file, its own config, never the zoo's weights."""
    name = "swin_tiny_patch4_window7_224.pth"
    torch.manual_seed(0)
    config = load_config(TINY_CFG)
    torch.save({"model": build_model(config).state_dict(), "config": config.dump()}, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    assert zoo.find(name) is None and download.local_weights(name) == name
    assert config_from_weights(name, "--resume").MODEL.SWIN.EMBED_DIM == config.MODEL.SWIN.EMBED_DIM
    assert zoo.find(name[:-4]) is not None  # the bare name, which is no file here, is still the zoo's


def test_without_cfg_a_url_to_a_checkpoint_of_ours_brings_its_config_and_a_typo_gets_a_suggestion(server, tmp_path):
    torch.manual_seed(0)
    config = load_config(TINY_CFG)
    target = tmp_path / "ours.pth"
    torch.save({"model": build_model(config).state_dict(), "config": config.dump()}, target)
    server.routes["/ours.pth"] = (200, target.read_bytes(), None)
    env = {"TORCH_HOME": str(tmp_path / "home")}
    done = run_main("--eval", "--resume", server.url("/ours.pth"), "--output", str(tmp_path / "out"), env=env)
    assert done.returncode == 0 and "eval on" in done.stdout, done.stderr[-2000:]
    typo = run_main("--eval", "--resume", "swin_tiny_patch4_window7_22", "--output", str(tmp_path / "out"), env=env)
    assert_user_error(typo, "swin_tiny_patch4_window7_22", "did you mean swin_tiny_patch4_window7_224?")


@requires_shared("reference/model_zoo.tsv")
def test_zoo_table_is_the_reference_model_hub():
    reference = os.path.join(SHARED, "reference", "model_zoo.tsv")
    with open(reference, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(e.name, e.url, e.resolution, e.window, e.num_classes, e.top1) for e in zoo.entries()] == \
        [(r["name"], r["url"], int(r["resolution"]), int(r["window"]), int(r["num_classes"]),
          float(r["top1_in1k"]) if r["top1_in1k"] else None) for r in rows]
    for entry, row in zip(zoo.entries(), rows):
        if entry.config:
            assert os.path.basename(entry.config) == os.path.basename(row["reference_config"])
            cfg = config_from_weights(entry.name, "--resume")
            assert (cfg.DATA.IMG_SIZE, cfg.MODEL.NUM_CLASSES) == (entry.resolution, entry.num_classes), entry.name


def test_a_zoo_name_takes_its_url_config_and_cached_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = zoo.find("swin_tiny_patch4_window7_224")
    assert download.source_url(entry.name) == entry.url and zoo.find(entry.url) == entry
    torch.manual_seed(0)
    model = build_model(load_config(os.path.join(ROOT, entry.config))).eval()
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save({"model": model.state_dict()}, download.cache_path(entry.url))
    image = torch.rand(3, 224, 224)
    torchvision.utils.save_image(image, tmp_path / "photo.png")
    assert predict.main([str(tmp_path / "photo.png"), "--resume", entry.name, "--topk", "2", "--output",
                         str(tmp_path / "p.json"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "photo.png: " in out and out.count("(0.") >= 2 and f"wrote 1 predictions to {tmp_path / 'p.json'}" in out


def test_a_zoo_name_with_another_model_in_cfg_names_the_config_to_use(tmp_path):
    result = run_main("--cfg", os.path.join(ROOT, "configs", "swin_small.yaml"), "--pretrained",
                      "swin_tiny_patch4_window7_224", "--output", str(tmp_path))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "configs/swin/swin_tiny_patch4_window7_224.yaml" in errors[0] and "DEPTHS" in errors[0]
