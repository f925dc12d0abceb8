"""checkpoints/weights.py: weights are read, checked and loaded in one place: non-finite values, other
architectures, resized tables, the 22k head, and heads mapped to the data's classes by name.
"""

import logging
import os

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from bad_inputs import png_bytes
from conftest import (
    ROOT,
    TINY_CFG,
    assert_user_error,
    command,
    eval_line,
    logits_of,
    ok,
    reference_model,
    run,
    run_dir,
    run_main,
    tiny_model,
    weights,
)

from checkpoints.weights import load_pretrained, load_weights
from config import load_config
from models import build_model
from models.pretrained import imagenet22k_to_1k_rows
from utils import CheckpointError


def test_non_finite_weights_are_an_error_naming_the_tensor():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layers.1.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite values in layers\.1\.blocks\.0\.mlp\.fc1\.weight"):
        load_weights(model, state, "diverged.pth", "")


LOGGER = logging.getLogger("test")


def test_finetune_224_w7_to_384_w12_resizes_tables_bicubically(tmp_path):
    source = reference_model("swin_tiny.yaml")
    path = tmp_path / "w7.pth"
    torch.save({"model": source.state_dict()}, path)
    target = reference_model("swin_tiny.yaml", "DATA.IMG_SIZE", "384", "MODEL.SWIN.WINDOW_SIZE", "12")
    load_pretrained(target, str(path), LOGGER)
    key = "layers.1.blocks.0.attn.relative_position_bias_table"
    table = source.state_dict()[key]
    expected = F.interpolate(table.permute(1, 0).reshape(1, 6, 13, 13), size=(23, 23), mode="bicubic",
                             align_corners=False).reshape(6, 529).permute(1, 0)
    torch.testing.assert_close(target.state_dict()[key], expected)
    torch.testing.assert_close(target.state_dict()["head.weight"], source.state_dict()["head.weight"])
    assert target.state_dict()["layers.0.blocks.1.attn_mask"].shape == (64, 144, 144)
    with torch.no_grad():
        assert target.eval()(torch.randn(1, 3, 384, 384)).shape == (1, 1000)


def test_finetune_maps_22k_head_and_reinitialises_other_heads(tmp_path, caplog):
    source = tiny_model("MODEL.NUM_CLASSES", "21841")
    path = tmp_path / "22k.pth"
    torch.save({"model": source.state_dict()}, path)
    target = tiny_model("MODEL.NUM_CLASSES", "1000")
    load_pretrained(target, str(path), LOGGER)
    rows = torch.tensor(imagenet22k_to_1k_rows())
    torch.testing.assert_close(target.head.weight, source.head.weight[rows])
    torch.testing.assert_close(target.head.bias, source.head.bias[rows])
    other = tiny_model("MODEL.NUM_CLASSES", "7")
    head_before = other.head.weight.clone()
    with caplog.at_level(logging.INFO, logger="test"):
        load_pretrained(other, str(path), LOGGER)
    torch.testing.assert_close(other.head.weight, head_before)
    torch.testing.assert_close(other.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert "starts from scratch" in caplog.text


def test_pretrained_from_another_architecture_is_a_one_line_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": tiny_model("MODEL.SWIN.EMBED_DIM", "32").state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"does not fit this model \(.*patch_embed"):
        load_pretrained(tiny_model(), str(path), LOGGER)


@pytest.mark.parametrize("source", ["timm swin", "timm swinv2", "torchvision swin_t", "torchvision swin_v2_t"])
def test_timm_and_torchvision_files_load_through_pretrained(source, tmp_path, caplog):
    cfg_name, size, theirs = {
        "timm swin": ("swin_tiny.yaml", 224, lambda: timm.create_model("swin_tiny_patch4_window7_224")),
        "timm swinv2": ("swinv2/swinv2_tiny_patch4_window8_256.yaml", 256,
                        lambda: timm.create_model("swinv2_tiny_window8_256")),
        "torchvision swin_t": ("swin_tiny.yaml", 224, torchvision.models.swin_t),
        "torchvision swin_v2_t": ("swinv2/swinv2_tiny_patch4_window8_256.yaml", 256, torchvision.models.swin_v2_t),
    }[source]
    torch.manual_seed(1)
    published = theirs().eval()
    path = tmp_path / "theirs.pth"
    torch.save({"state_dict": published.state_dict()} if source.startswith("timm") else published.state_dict(), path)
    ours = build_model(load_config(os.path.join(ROOT, "configs", cfg_name)))
    with caplog.at_level("INFO"):
        load_pretrained(ours, str(path), logging.getLogger("test"))
    layout = source.split()[0]
    assert f"holds {layout}'s layout; converted" in caplog.text
    torch.testing.assert_close(logits_of(ours, size), logits_of(published, size), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("data_names, rows", [(list("abcd"), [0, 1, 2, 3]), (list("dcba"), [3, 2, 1, 0]),
                                              (list("cadb"), [2, 0, 3, 1]), (list("bd"), [1, 3]),
                                              (list("abcz"), None), (None, [0, 1, 2, 3])])
def test_a_pretrained_head_that_names_its_classes_is_mapped_to_the_datas_by_name(data_names, rows, tmp_path):
    """A checkpoint of ours names its classes: its head rows follow the data's class order (the folder's sorted
    names), the same head in the checkpoint's order would answer for other classes; a class it does not know
    starts the head from scratch, and the caller is told so."""
    import logging

    from checkpoints.weights import load_pretrained

    source = build_model(load_config(TINY_CFG, ("MODEL.NUM_CLASSES", "4")))
    torch.save({"model": source.state_dict(), "class_names": list("abcd")}, tmp_path / "named.pth")
    target = build_model(load_config(TINY_CFG, ("MODEL.NUM_CLASSES", str(len(data_names or "abcd")))))
    fresh = load_pretrained(target, str(tmp_path / "named.pth"), logging.getLogger("test"), data_names)
    if rows is None:
        assert fresh == {"head.weight", "head.bias"}
        return
    assert fresh == set()
    torch.testing.assert_close(target.head.weight, source.head.weight[rows], atol=0, rtol=0)
    torch.testing.assert_close(target.head.bias, source.head.bias[rows], atol=0, rtol=0)


def test_eval_with_pretrained_weights_answers_in_the_datas_class_order(tmp_path):
    """A checkpoint whose classes are named in another order than the folder's sorted ones: --eval --pretrained
    maps its head by name, as --eval --resume labels the data by the checkpoint's names; a head that cannot answer
    for the data's classes is refused, never evaluated at random."""
    for name, count in (("a", 3), ("b", 1), ("c", 1)):
        os.makedirs(tmp_path / "data" / "val" / name)
        for i in range(count):
            (tmp_path / "data" / "val" / name / f"{i}.png").write_bytes(png_bytes(colour=(60 * i, 90, 30)))
    model = build_model(load_config(TINY_CFG, ("MODEL.NUM_CLASSES", "3")))
    state = model.state_dict()
    state["head.weight"].zero_()
    state["head.bias"].copy_(torch.tensor([0.0, 0.0, 10.0]))  # always the checkpoint's class 2, which it calls "a"
    torch.save({"model": state, "class_names": ["c", "b", "a"]}, tmp_path / "named.pth")
    common = ("--cfg", TINY_CFG, "--eval", "--data-path", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
              "--opts", "DATA.DATASET", "imagenet")
    lines = [eval_line(run_main(*common[:2], flag, str(tmp_path / "named.pth"), *common[2:]))
             for flag in ("--resume", "--pretrained")]
    assert lines[0] == lines[1] and "top-1 60.000%" in lines[0], lines
    torch.save({"model": state, "class_names": ["c", "b", "x"]}, tmp_path / "other.pth")
    refused = run_main(*common[:2], "--pretrained", str(tmp_path / "other.pth"), *common[2:])
    assert_user_error(refused, "--eval --pretrained", "other.pth", "start from scratch")


def test_a_fine_tunes_ema_starts_from_the_pretrained_weights(finished_run, tmp_path):
    pretrained = os.path.join(run_dir(finished_run), "ckpt_epoch_1.pth")
    ok(run(command(tmp_path, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.EMA_DECAY", "0.99999",
                   flags=("--pretrained", pretrained))))
    ema = torch.load(os.path.join(run_dir(tmp_path), "ckpt_epoch_0.pth"), weights_only=True)["model_ema"]
    start = weights(finished_run)
    for key in ("patch_embed.proj.weight", "layers.1.blocks.1.mlp.fc2.weight", "head.weight"):
        torch.testing.assert_close(ema[key], start[key], atol=1e-3, rtol=0)
