"""jobs/evaluate.py: --eval rebuilds the model from the checkpoint's config and reads the data where --data-path
holds it (class folders, val only, a subset of classes, or the zips).
"""

import json
import os
import shutil

import pytest
import torch
from conftest import (
    CLASS_RUN_NAMES,
    CLASS_RUN_OPTS,
    TINY_CFG,
    assert_user_error,
    config_for,
    eval_line,
    run_main,
    write_layouts,
)

from data import build_eval_loader
from data.datasets import ImageFolderDataset, ZipMapDataset
from runtime import Runtime


def test_eval_from_the_checkpoint_alone_equals_eval_with_cfg_and_opts(class_run, tmp_path):
    source = ("--eval", "--resume", class_run["ckpt"], "--data-path", class_run["data"], "--output", str(tmp_path))
    alone = run_main(*source)
    given = run_main(*source, "--cfg", TINY_CFG, "--opts", "DATA.DATASET", "'imagenet'", *CLASS_RUN_OPTS)
    assert eval_line(alone) == eval_line(given) and "on 12 images" in eval_line(alone)
    assert "top-5" not in eval_line(alone)  # four classes: top-5 would always be 100%


def test_eval_reads_a_val_only_folder_a_class_tree_and_a_subset_of_classes(class_run, tmp_path):
    only_val = tmp_path / "only_val"
    shutil.copytree(os.path.join(class_run["data"], "val"), only_val / "val")
    tree = tmp_path / "tree"
    shutil.copytree(os.path.join(class_run["data"], "val"), tree)
    subset = tmp_path / "subset"
    shutil.copytree(os.path.join(class_run["data"], "val"), subset)
    shutil.rmtree(subset / "ant")
    shutil.rmtree(subset / "cat")
    lines = {}
    for name, folder in (("only_val", only_val), ("tree", tree), ("subset", subset)):
        out = tmp_path / f"out_{name}"
        lines[name] = eval_line(run_main("--eval", "--resume", class_run["ckpt"], "--data-path", str(folder),
                                         "--output", str(out)))
        report = json.load(open(out / "swin_tiny_test" / "default" / "eval_per_class.json"))
        lines[name + " classes"] = report["classes"]
        assert [c["name"] for c in report["classes"]] == list(CLASS_RUN_NAMES)
        assert os.path.isfile(out / "swin_tiny_test" / "default" / "eval_confusion.png")
    assert lines["only_val"] == lines["tree"] and "on 12 images" in lines["tree"]
    full = {c["name"]: c for c in lines["tree classes"]}
    matrix_rows = json.load(open(tmp_path / "out_tree" / "swin_tiny_test" / "default" / "eval_per_class.json"))
    assert [sum(row) for row in matrix_rows["confusion"]] == [3, 3, 3, 3]
    # The subset is labelled as the model numbers its classes: its per-class figures are the full set's.
    for entry in lines["subset classes"]:
        expected = full[entry["name"]] if entry["name"] in ("bee", "dog") else {**entry, "images": 0, "top1": None}
        assert (entry["images"], entry["top1"]) == (expected["images"], expected["top1"]), entry
    subset_top1 = float(lines["subset"].split("top-1 ")[1].split("%")[0])
    assert subset_top1 == pytest.approx((full["bee"]["top1"] + full["dog"]["top1"]) / 2, abs=0.01)


@pytest.fixture(scope="module")
def trained_from_zips(tmp_path_factory):
    """A tiny checkpoint trained with --zip on a data path holding the zips and the same images as folders."""
    root = tmp_path_factory.mktemp("zips")
    write_layouts(str(root), {"train": 16, "val": 6})
    result = run_main("--cfg", TINY_CFG, "--data-path", str(root), "--zip", "--output", str(root / "out"), "--opts",
                      "DATA.DATASET", "'imagenet'", "MODEL.NUM_CLASSES", "2", "TRAIN.EPOCHS", "1",
                      "TRAIN.WARMUP_EPOCHS", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    return root, str(root / "out" / "swin_tiny_test" / "default" / "best.pth")


def test_a_checkpoint_trained_from_zips_evaluates_class_folders_as_it_does_the_zip(trained_from_zips, tmp_path):
    root, ckpt = trained_from_zips
    folders = tmp_path / "folders"
    shutil.copytree(root / "val", folders / "val")  # the same 6 images, in val/<class>/ and no val.zip beside them
    from_folders = run_main("--eval", "--resume", ckpt, "--data-path", str(folders), "--output", str(tmp_path / "a"))
    from_zip = run_main("--eval", "--resume", ckpt, "--data-path", str(root), "--output", str(tmp_path / "b"))
    assert "on 6 images" in eval_line(from_folders) and eval_line(from_folders) == eval_line(from_zip)


def test_a_data_path_with_neither_names_what_it_lacks(trained_from_zips, tmp_path):
    _, ckpt = trained_from_zips
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_main("--eval", "--resume", ckpt, "--data-path", str(empty), "--output", str(tmp_path / "out"))
    assert_user_error(result, f"data path {empty} holds no val/ folder, no val.zip and no class folders",
                      "pass the folder that holds val/<class>/ images")


@pytest.mark.parametrize("zip_mode", [True, False])
@pytest.mark.parametrize("holds", ["val.zip", "val/", "both"])
def test_the_data_path_layout_picks_what_eval_reads_and_zip_mode_only_between_both(tmp_path, zip_mode, holds):
    write_layouts(str(tmp_path), {"val": 5})
    if holds == "val.zip":
        shutil.rmtree(tmp_path / "val")
    elif holds == "val/":
        os.remove(tmp_path / "val.zip")
    loader, classes, _ = build_eval_loader(config_for(str(tmp_path), zip_mode), Runtime(torch.device("cpu")))
    reads_zip = holds == "val.zip" or (holds == "both" and zip_mode)
    assert isinstance(loader.dataset, ZipMapDataset if reads_zip else ImageFolderDataset)
    assert len(loader.dataset) == 5 and classes == 2
