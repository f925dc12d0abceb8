"""models/simmim.py and SimMIM pre-training through main.py: masked L1 by hand, the reference's checkpoint
layout, resume, two ranks, and fine-tuning from it.
"""

import logging
import math
import os
import re
import signal

import pytest
import torch
import torch.nn.functional as F
from bad_inputs import png_bytes, zip_tree
from conftest import (
    ROOT,
    SIMMIM,
    TINY_CFG,
    TINY_V2,
    assert_user_error,
    command,
    interrupt_after,
    metrics_lines,
    ok,
    run,
    run_dir,
    run_main,
    tiny_config,
    torchrun,
)
from PIL import Image
from yacs.config import CfgNode

from checkpoints.weights import load_pretrained
from config import load_config
from data.simmim import MaskGenerator
from models import build_model
from models.pretrained import resize_bias_table
from models.simmim import SimMIM, masked_l1, normalized_target
from tools import plot_metrics

# A pre-training run on the built-in digits: 179 steps of 8 images per epoch.
DIGITS_PRETRAIN = ("DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "1", *SIMMIM)


def masks_for(batch: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    generator = MaskGenerator(32, 8, 4, 0.6)
    return torch.stack([generator() for _ in range(batch)])  # B, 8, 8


def test_loss_is_the_mean_absolute_error_over_masked_pixels_by_hand():
    prediction = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 7
    target = torch.linspace(-1, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    hidden = [(0, 0, 1), (1, 3, 2), (1, 2, 2)]
    for b, h, w in hidden:
        mask[b, 0, h, w] = 1
    by_hand = sum(abs(float(prediction[b, c, h, w] - target[b, c, h, w])) for b, h, w in hidden for c in range(3))
    by_hand /= 3 * len(hidden)
    assert float(masked_l1(prediction, target, mask)) == pytest.approx(by_hand, rel=1e-5)
    visible_changed = prediction + 5.0 * (1 - mask)
    assert float(masked_l1(visible_changed, target, mask)) == pytest.approx(by_hand, rel=1e-5)


def test_normalised_target_is_the_neighbourhood_standardised_pixel_by_hand():
    torch.manual_seed(0)
    images = torch.randn(1, 2, 5, 5)
    target = normalized_target(images, 3)
    for c, h, w in ((0, 0, 0), (1, 2, 2), (0, 4, 1)):
        around = images[0, c, max(h - 1, 0) : h + 2, max(w - 1, 0) : w + 2].flatten().double()
        expected = (images[0, c, h, w] - around.mean()) / math.sqrt(float(around.var(unbiased=True)) + 1e-6)
        assert float(target[0, c, h, w]) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("family", [(), TINY_V2], ids=["v1", "v2"])
def test_the_mask_token_replaces_only_masked_patches_and_the_decoder_gives_pixels(family):
    torch.manual_seed(0)
    model = build_model(tiny_config(*SIMMIM, *family)).eval()
    assert isinstance(model, SimMIM) and model.encoder_stride == 8
    images, masks = torch.randn(2, 3, 32, 32), masks_for(2)
    seen = {}
    feature_map = model.encoder.forward_feature_map
    model.encoder.forward_feature_map = lambda tokens: (seen.update(tokens=tokens), feature_map(tokens))[1]
    pixels = model.reconstruct(images, masks)
    assert pixels.shape == (2, 3, 32, 32)
    embedded, tokens = model.encoder.patch_embed(images), seen["tokens"]  # B, 8, 8, C
    assert torch.equal(tokens[~masks], embedded[~masks])
    token = model.encoder.mask_token.reshape(1, -1)
    assert torch.equal(tokens[masks], token.expand(int(masks.sum()), -1))


@pytest.mark.parametrize("family", [(), TINY_V2], ids=["v1", "v2"])
def test_forward_returns_the_l1_over_masked_pixels_and_training_lowers_it(family):
    torch.manual_seed(0)
    model = build_model(tiny_config(*SIMMIM, *family))
    # Smooth images, whose hidden patches can be told from the visible ones around them.
    images = F.interpolate(torch.randn(4, 3, 4, 4), size=32, mode="bilinear", align_corners=False)
    masks = masks_for(4)
    model.eval()
    with torch.no_grad():
        pixels = model.reconstruct(images, masks)
        covered = F.interpolate(masks[:, None].float(), scale_factor=4, mode="nearest").bool()  # B, 1, 32, 32
        by_hand = (pixels - images).abs().permute(0, 2, 3, 1)[covered[:, 0]].mean()
        assert float(model(images, masks)) == pytest.approx(float(by_hand), rel=1e-5)
        first = float(model(images, masks))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(images, masks)
        loss.backward()
        assert model.encoder.mask_token.grad.abs().sum() > 0
        optimizer.step()
    assert loss.item() < 0.75 * first


def _reference_simmim_file(path: str, family: tuple) -> dict:
    """A pre-training checkpoint written as the reference writes one: `encoder.`/`decoder.` names with the
    derived buffers (index tables, shift masks, TINY_V2 coordinate tables), V2's early `rpe_mlp` name, the optimizer
    and schedule, and a pickled yacs config."""
    torch.manual_seed(1)
    source = build_model(tiny_config(*SIMMIM, *family))
    state = dict(source.state_dict())
    for name, module in source.named_modules():
        if name.endswith(".attn"):
            block = name[: -len(".attn")]
            state[f"{block}.attn_mask"] = torch.zeros(4, 16, 16)
            if "relative_coords_table" not in dict(module.named_buffers()):
                continue
            state[f"{name}.relative_coords_table"] = torch.zeros(1, 7, 7, 2)
    state = {k.replace(".cpb_mlp.", ".rpe_mlp."): v for k, v in state.items()}
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {}, "scaler": {},
                "max_accuracy": 0.0, "epoch": 799, "config": CfgNode({"MODEL": CfgNode({"TYPE": "swin"})})}, path)
    return state


@pytest.mark.parametrize("family, finetune", [((), ("MODEL.SWIN.WINDOW_SIZE", "2")), (TINY_V2, ())], ids=["v1", "v2"])
def test_a_reference_simmim_checkpoint_fine_tunes_into_a_classifier_with_every_key_accounted_for(
        family, finetune, tmp_path, caplog):
    path = str(tmp_path / "simmim_pretrain.pth")
    source = _reference_simmim_file(path, family)
    torch.manual_seed(2)
    classifier = build_model(tiny_config(*family, *finetune))
    head = {k: v.clone() for k, v in classifier.state_dict().items() if k.startswith("head.")}
    with caplog.at_level(logging.INFO):
        load_pretrained(classifier, path, logging.getLogger("simmim-test"))
    log = caplog.text
    assert "is SimMIM pre-training" in log and "left out its decoder and mask token" in log
    derived = ("relative_position_index", "attn_mask", "relative_coords_table")
    taken = set()
    for key, value in classifier.state_dict().items():
        if key.startswith("head."):
            assert torch.equal(value, head[key])  # a new head, as initialised
            continue
        if key.endswith(derived):
            continue
        old_key = "encoder." + key.replace(".cpb_mlp.", ".rpe_mlp.")
        taken.add(old_key)
        if key.endswith("relative_position_bias_table") and value.shape != source[old_key].shape:
            assert torch.allclose(value, resize_bias_table(source[old_key], value.shape[0]))
            assert f"resized {key}" in log
        else:
            assert torch.equal(value, source[old_key]), key
    left = {k for k in source if k not in taken and not k.endswith(derived)}
    assert left == {"encoder.mask_token", "decoder.0.weight", "decoder.0.bias"}
    assert ("renamed from the early Swin V2 rpe_mlp to cpb_mlp" in log) == bool(family)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Two epochs of SimMIM pre-training on the digits with two loader workers, through main.py."""
    output = tmp_path_factory.mktemp("pretrained")
    ok(run(command(output, *DIGITS_PRETRAIN, "DATA.NUM_WORKERS", "2")))
    return output


def test_pretraining_writes_checkpoints_of_the_reference_layout_and_losses_that_fall(pretrained):
    folder = run_dir(pretrained)
    payload = torch.load(os.path.join(folder, "ckpt_epoch_1.pth"), weights_only=True)
    keys = set(payload["model"])
    assert "encoder.mask_token" in keys and "decoder.0.weight" in keys and not any(k.startswith("head") for k in keys)
    assert all(k.startswith(("encoder.", "decoder.")) for k in keys)
    lines = metrics_lines(pretrained)
    assert [line["epoch"] for line in lines] == [0, 1] and lines[1]["train_loss"] < lines[0]["train_loss"]
    assert not any(k.startswith("val_") for k in lines[0])
    assert sorted(n for n in os.listdir(folder) if n.endswith(".pth")) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    assert plot_metrics.main([folder, "--output", os.path.join(folder, "curves.png")]) == 0
    assert Image.open(os.path.join(folder, "curves.png")).size == (1000, 400)  # loss and lr: two panels


def test_pretraining_resumed_after_sigterm_equals_an_uninterrupted_run(pretrained, tmp_path):
    cmd = command(tmp_path, *DIGITS_PRETRAIN, "DATA.NUM_WORKERS", "2")
    stopped = interrupt_after(cmd, r"train 1 \[20/")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert re.search(r"saved .*ckpt_epoch_1_step_\d+\.pth", stopped.stderr)
    resumed = ok(run(cmd))
    assert re.search(r"resumed from .*ckpt_epoch_1_step_\d+\.pth: epoch 1, \d+ batches done", resumed.stdout)
    straight = torch.load(os.path.join(run_dir(pretrained), "ckpt_epoch_1.pth"), weights_only=True)["model"]
    again = torch.load(os.path.join(run_dir(tmp_path), "ckpt_epoch_1.pth"), weights_only=True)["model"]
    assert all(torch.equal(straight[k], again[k]) for k in straight)
    assert metrics_lines(tmp_path) == metrics_lines(pretrained)


def test_two_ranks_pretrain_as_one_process_with_the_same_global_batch(tmp_path):
    opts = (*DIGITS_PRETRAIN, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1000",
            "MODEL.DROP_PATH_RATE", "0.0")
    ok(run(command(tmp_path / "one", *opts, "DATA.BATCH_SIZE", "8")))
    ok(run(command(tmp_path / "two", *opts, "DATA.BATCH_SIZE", "4", launcher=torchrun(2))))
    one = torch.load(os.path.join(run_dir(tmp_path / "one"), "ckpt_epoch_0.pth"), weights_only=True)["model"]
    two = torch.load(os.path.join(run_dir(tmp_path / "two"), "ckpt_epoch_0.pth"), weights_only=True)["model"]
    worst = max(float((one[k].double() - two[k].double()).abs().max()) for k in one if one[k].is_floating_point())
    # 179 AdamW steps turn the other summation order of the gradients into differences of about 1e-4; other
    # masks (ratio 0.5 instead of 0.6) move the weights by 5e-2.
    assert worst < 1e-3


def test_our_pretraining_fine_tunes_through_main(pretrained, tmp_path):
    ckpt = os.path.join(run_dir(pretrained), "ckpt_epoch_1.pth")
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path), "--pretrained", ckpt, "--opts",
                      "DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "1000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is SimMIM pre-training: took its encoder" in result.stdout
    assert "head.bias, head.weight start from scratch" in result.stdout
    assert re.search(r"epoch 1: val top-1 [\d.]+%", result.stdout)


@pytest.mark.parametrize("layout", ["flat folder", "class folders", "zip"])
def test_pretraining_reads_images_without_labels_from_any_source(layout, tmp_path):
    data = tmp_path / "data"
    if layout == "zip":
        zip_tree(str(data))
        source = ("DATA.ZIP_MODE", "True")
    else:
        for i in range(24):
            folder = data / ("" if layout == "flat folder" else f"class{i % 3}")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(png_bytes((40, 36), (10 * i, 200 - 5 * i, 30)))
        source = ()
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", str(data), "--opts",
                      *SIMMIM, "DATA.DATASET", "'imagenet'", "DATA.BATCH_SIZE", "4", "TRAIN.EPOCHS", "2", *source)
    assert result.returncode == 0, result.stderr[-2000:]
    count = 16 if layout == "zip" else 24
    assert f"SimMIM pre-training on {count} images: 10 of 16 mask patches (8px) hidden" in result.stdout
    assert "epoch 1: reconstruction loss" in result.stdout


def test_the_reference_simmim_configs_and_command_lines_work_with_main():
    """Its pre-training command line with main.py for main_simmim_pt.py; each fine-tuning config builds the
    encoder its pre-training config trains (window and size may differ: fine-tuning adapts them)."""
    import main as main_module
    from config import get_config
    from configuration.checks import architecture_differences

    folder = os.path.join(ROOT, "configs", "simmim")
    pairs = [("simmim_pretrain__swin_base__img192_window6__800ep", "simmim_finetune__swin_base__img224_window7__800ep"),
             ("simmim_pretrain__swinv2_base__img192_window12__800ep",
              "simmim_finetune__swinv2_base__img224_window14__800ep")]
    for pretrain, finetune in pairs:
        args = main_module.parse_args(["--cfg", os.path.join(folder, pretrain + ".yaml"), "--batch-size", "128",
                                       "--data-path", "/data/imagenet/train", "--disable-amp", "--tag", "job"])
        config = get_config(args)
        assert config.MODEL.SIMMIM.PRETRAIN and not config.AMP_ENABLE and config.DATA.BATCH_SIZE == 128
        assert (config.DATA.MASK_PATCH_SIZE, config.DATA.MASK_RATIO, config.TRAIN.LR_SCHEDULER.MULTISTEPS) == \
            (32, 0.6, [700])
        tuned = load_config(os.path.join(folder, finetune + ".yaml"))
        assert not tuned.MODEL.SIMMIM.PRETRAIN and tuned.TRAIN.LAYER_DECAY < 1
        assert architecture_differences(tuned, config, with_resolution=False) == []
    v2 = load_config(os.path.join(folder, pairs[1][0] + ".yaml"))
    assert v2.MODEL.SIMMIM.NORM_TARGET.ENABLE and v2.MODEL.SIMMIM.NORM_TARGET.PATCH_SIZE == 47
    small = load_config(os.path.join(folder, "simmim_pretrain__swin_cifar10.yaml"))
    assert architecture_differences(load_config(os.path.join(ROOT, "configs", "swin_cifar10.yaml")), small,
                                    with_resolution=True) == []


def test_a_reference_pretraining_optimizer_state_is_refused_in_one_line_and_its_weights_start_a_run(tmp_path):
    """The reference's pre-training decays the position tables (its prefixed skip keywords never match), so its
    saved optimizer groups are not ours: --resume says so; --pretrained takes the weights."""
    torch.manual_seed(0)
    model = build_model(tiny_config(*SIMMIM))
    exempt = {"encoder.absolute_pos_embed", "encoder.mask_token"}
    groups = [[p for n, p in model.named_parameters() if not (p.ndim == 1 or n.endswith(".bias") or n in exempt)],
              [p for n, p in model.named_parameters() if p.ndim == 1 or n.endswith(".bias") or n in exempt]]
    optimizer = torch.optim.AdamW([{"params": groups[0]}, {"params": groups[1], "weight_decay": 0.0}])
    model(torch.randn(2, 3, 32, 32), masks_for(2)).backward()
    optimizer.step()
    path = str(tmp_path / "reference_pretrain.pth")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": {}, "scaler": {},
                "epoch": 3, "max_accuracy": 0.0}, path)
    opts = ("--opts", *SIMMIM, "DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "1000")
    refused = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "a"), "--resume", path, *opts)
    assert_user_error(refused, "reference_pretrain.pth has optimizer state for other parameters", "--pretrained")
    started = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "b"), "--pretrained", path, *opts)
    assert started.returncode == 0, started.stderr[-2000:]
    assert "loaded pretrained weights" in started.stdout and "mask_token start from scratch" in started.stdout
