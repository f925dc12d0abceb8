"""tools/reconstruct.py: original, masked and rebuilt images; a classifier is refused in one line.
"""

import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bad_inputs import png_bytes
from conftest import SIMMIM, tiny_config
from PIL import Image

from data.simmim import MaskGenerator
from models import build_model
from tools import reconstruct


@pytest.mark.parametrize("norm_target", [False, True], ids=["pixels", "normalised"])
def test_reconstruct_draws_original_masked_and_rebuilt_with_the_visible_pixels_kept(norm_target, tmp_path, capsys):
    config = tiny_config(*SIMMIM, "MODEL.SIMMIM.NORM_TARGET.ENABLE", str(norm_target),
                         "MODEL.SIMMIM.NORM_TARGET.PATCH_SIZE", "5")
    torch.manual_seed(0)
    ckpt = str(tmp_path / "simmim.pth")
    torch.save({"model": build_model(config).state_dict(), "config": config.dump()}, ckpt)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(png_bytes((32, 32), (60 * i, 90, 200 - 50 * i)))
    output = str(tmp_path / "grid.png")
    assert reconstruct.main(["--resume", ckpt, str(images), "--output", output, "--count", "2"]) == 0
    assert re.search(r"2 images, 10 of 16 mask patches hidden; reconstruction loss [\d.]+", capsys.readouterr().out)
    grid = torch.from_numpy(np.array(Image.open(output).convert("RGB")))  # 18 + 2 x 128, 3 x 128, 3
    original, masked, rebuilt = (grid[18:, i * 128 : (i + 1) * 128] for i in range(3))
    torch.manual_seed(0)
    generator = MaskGenerator(32, 8, 4, 0.6)
    masks = torch.stack([generator() for _ in range(2)])
    visible = ~F.interpolate(masks[:, None].float(), scale_factor=16, mode="nearest").bool()[:, 0]
    visible = visible.reshape(2 * 128, 128)  # the two rows one above the other
    assert torch.equal(rebuilt[visible], original[visible]) and torch.equal(masked[visible], original[visible])
    assert not torch.equal(rebuilt[~visible], masked[~visible])  # predicted pixels where the mask was


def test_reconstruct_refuses_a_classifier_in_one_line(tmp_path, capsys):
    ckpt = str(tmp_path / "classifier.pth")
    torch.save({"model": build_model(tiny_config()).state_dict(), "config": tiny_config().dump()}, ckpt)
    (tmp_path / "a.png").write_bytes(png_bytes())
    code = reconstruct.main(["--resume", ckpt, str(tmp_path / "a.png"), "--output", str(tmp_path / "r.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is a classifier" in err and "MODEL.SIMMIM.PRETRAIN" in err
    assert not os.path.exists(tmp_path / "r.png")
