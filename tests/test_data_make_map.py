"""data/make_map.py: the map file it writes and the zip of the folder tree train with a part cache.
"""

import os
import subprocess
import sys
import zipfile

from conftest import ROOT, TINY_CFG, run_main, two_class_images


def test_zip_layout_written_by_make_map_trains_with_part_cache(tmp_path):
    """The zip layout end to end: make_map writes the map, the zip holds the folder tree."""
    root = two_class_images(tmp_path / "data")
    for split in ("train", "val"):
        with zipfile.ZipFile(tmp_path / "data" / f"{split}.zip", "w") as archive:
            for dirpath, _, files in os.walk(os.path.join(root, split)):
                for name in files:
                    full = os.path.join(dirpath, name)
                    archive.write(full, os.path.relpath(full, os.path.join(root, split)))
        result = subprocess.run([sys.executable, "-m", "data.make_map", os.path.join(root, split)], cwd=ROOT,
                                capture_output=True, text=True)
        (tmp_path / "data" / f"{split}_map.txt").write_text(result.stdout)
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", root, "--zip",
                      "--cache-mode", "part", "--batch-size", "4", "--opts", "DATA.DATASET", "'imagenet'",
                      "MODEL.NUM_CLASSES", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch 1: val top-1" in result.stdout
