"""--eval reads the data where --data-path holds it: a checkpoint trained from zips (its config has DATA.ZIP_MODE)
evaluates class folders, and a data path with neither is one line saying what it lacks and what to pass."""

import os
import shutil

import pytest
import torch
from conftest import TINY_CFG, assert_user_error, config_for, run_main, write_layouts

from data import build_eval_loader
from data.datasets import ImageFolderDataset, ZipMapDataset
from runtime import Runtime


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


def eval_line(result) -> str:
    assert result.returncode == 0, result.stderr[-2000:]
    return next(line.split("] ", 1)[1] for line in result.stdout.splitlines() if "eval on" in line)


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
