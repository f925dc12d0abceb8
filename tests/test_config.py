"""config.py: the shipped configs load with the reference's values, and get_config applies the reference's flags.
"""

import argparse
import glob
import os

import pytest
from conftest import ROOT, TINY_CFG

from config import get_config, load_config
from configuration.checks import reference_only_notes

CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def cfg_path(name: str) -> str:
    return os.path.join(ROOT, "configs", name)


def test_every_shipped_config_loads():
    assert len(CONFIG_FILES) >= 33
    for path in CONFIG_FILES:
        cfg = load_config(path)
        assert cfg.is_frozen()
        assert cfg.MODEL.NAME


def test_reference_file_names_are_shipped():
    swin = {os.path.basename(p) for p in glob.glob(cfg_path("swin/*.yaml"))}
    swinv2 = {os.path.basename(p) for p in glob.glob(cfg_path("swinv2/*.yaml"))}
    assert len(swinv2) == 12
    assert {"swin_tiny_patch4_window7_224.yaml", "swin_tiny_patch4_window7_224_22k.yaml",
            "swin_tiny_patch4_window7_224_22kto1k_finetune.yaml", "swin_base_patch4_window12_384_finetune.yaml",
            "swin_tiny_c24_patch4_window8_256.yaml", "swin_large_patch4_window12_384_22kto1k_finetune.yaml"} <= swin
    assert {"swinv2_tiny_patch4_window8_256.yaml", "swinv2_base_patch4_window12_192_22k.yaml",
            "swinv2_large_patch4_window12to24_192to384_22kto1k_ft.yaml"} <= swinv2


def test_swin_tiny_has_the_paper_recipe():
    cfg = load_config(cfg_path("swin_tiny.yaml"))
    assert cfg.MODEL.TYPE == "swin" and cfg.MODEL.NAME == "swin_tiny_patch4_window7_224"
    assert cfg.MODEL.DROP_PATH_RATE == 0.2
    assert list(cfg.MODEL.SWIN.DEPTHS) == [2, 2, 6, 2] and list(cfg.MODEL.SWIN.NUM_HEADS) == [3, 6, 12, 24]
    assert cfg.TRAIN.BASE_LR == 5e-4 and cfg.TRAIN.EPOCHS == 300 and cfg.TRAIN.WARMUP_EPOCHS == 20
    assert cfg.TRAIN.WEIGHT_DECAY == 0.05 and cfg.TRAIN.CLIP_GRAD == 5.0
    assert cfg.AUG.AUTO_AUGMENT == "rand-m9-mstd0.5-inc1"
    assert (cfg.AUG.MIXUP, cfg.AUG.CUTMIX, cfg.MODEL.LABEL_SMOOTHING, cfg.AUG.REPROB) == (0.8, 1.0, 0.1, 0.25)
    assert load_config(cfg_path("swin_small.yaml")).MODEL.DROP_PATH_RATE == 0.3
    assert load_config(cfg_path("swin_base.yaml")).MODEL.DROP_PATH_RATE == 0.5


def test_reference_values_per_family():
    pre = load_config(cfg_path("swin/swin_base_patch4_window7_224_22k.yaml"))
    assert (pre.DATA.DATASET, pre.MODEL.DROP_PATH_RATE, pre.MODEL.SWIN.EMBED_DIM) == ("imagenet22K", 0.2, 128)
    assert (pre.TRAIN.EPOCHS, pre.TRAIN.WARMUP_EPOCHS, pre.TRAIN.BASE_LR, pre.TRAIN.MIN_LR) == (90, 5, 1.25e-4, 1.25e-6)
    ft = load_config(cfg_path("swin/swin_base_patch4_window12_384_22kto1k_finetune.yaml"))
    assert (ft.DATA.IMG_SIZE, ft.MODEL.SWIN.WINDOW_SIZE, ft.TEST.CROP) == (384, 12, False)
    assert (ft.TRAIN.EPOCHS, ft.TRAIN.WEIGHT_DECAY, ft.TRAIN.BASE_LR, ft.TRAIN.WARMUP_LR) == (30, 1e-8, 2e-5, 2e-8)
    assert list(ft.MODEL.SWIN.DEPTHS) == [2, 2, 18, 2] and ft.MODEL.DROP_PATH_RATE == 0.2
    c24 = load_config(cfg_path("swin/swin_tiny_c24_patch4_window8_256.yaml"))
    assert (c24.DATA.IMG_SIZE, c24.MODEL.SWIN.WINDOW_SIZE, list(c24.MODEL.SWIN.NUM_HEADS)) == (256, 8, [4, 8, 16, 32])
    v2 = load_config(cfg_path("swinv2/swinv2_large_patch4_window12to16_192to256_22kto1k_ft.yaml"))
    assert (v2.MODEL.TYPE, v2.DATA.DATASET, v2.DATA.IMG_SIZE, v2.MODEL.SWINV2.WINDOW_SIZE) == \
        ("swinv2", "imagenet", 256, 16)
    assert list(v2.MODEL.SWINV2.PRETRAINED_WINDOW_SIZES) == [12, 12, 12, 6]
    assert (v2.MODEL.SWINV2.EMBED_DIM, v2.TRAIN.WEIGHT_DECAY) == (192, 1e-8)
    v2_22k = load_config(cfg_path("swinv2/swinv2_base_patch4_window12_192_22k.yaml"))
    assert (v2_22k.DATA.IMG_SIZE, v2_22k.TRAIN.WEIGHT_DECAY, v2_22k.MODEL.SWINV2.WINDOW_SIZE) == (192, 0.1, 12)
    v2_t = load_config(cfg_path("swinv2/swinv2_small_patch4_window16_256.yaml"))
    assert (v2_t.MODEL.SWINV2.WINDOW_SIZE, v2_t.MODEL.DROP_PATH_RATE, list(v2_t.MODEL.SWINV2.DEPTHS)) == \
        (16, 0.3, [2, 2, 18, 2])


def test_get_config_applies_flags_and_output_folder(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    args = argparse.Namespace(cfg=TINY_CFG, opts=["DATA.DATASET", "imagenet"], batch_size=4, data_path="/d", zip=True,
                              cache_mode="no",
                              pretrained=None, resume="r.pth", accumulation_steps=2, use_checkpoint=True,
                              disable_amp=True, output="out", tag="t1", eval=True, throughput=False, optim="sgd",
                              num_classes=None, amp_dtype="bf16", device="cpu", local_rank=None)
    cfg = get_config(args)
    assert (cfg.DATA.BATCH_SIZE, cfg.DATA.DATA_PATH, cfg.DATA.ZIP_MODE, cfg.DATA.CACHE_MODE) == (4, "/d", True, "no")
    assert (cfg.MODEL.RESUME, cfg.TRAIN.ACCUMULATION_STEPS, cfg.TRAIN.USE_CHECKPOINT) == ("r.pth", 2, True)
    assert (cfg.AMP_ENABLE, cfg.EVAL_MODE, cfg.THROUGHPUT_MODE, cfg.TRAIN.OPTIMIZER.NAME) == (False, True, False, "sgd")
    assert (cfg.AMP_DTYPE, cfg.DEVICE, cfg.LOCAL_RANK) == ("bf16", "cpu", 3)
    assert cfg.OUTPUT == os.path.join("out", "swin_tiny_test", "t1")


REFERENCE_COMMAND = ["--cfg", TINY_CFG, "--batch-size", "4", "--data-path", "/d", "--zip", "--cache-mode", "part",
                     "--accumulation-steps", "2", "--use-checkpoint", "--output", "out", "--tag", "t1",
                     "--fused_window_process", "--fused_layernorm", "--optim", "sgd", "--local_rank", "0",
                     "--opts", "DATA.DATASET", "imagenet"]


@pytest.mark.parametrize("level, amp", [("O0", False), ("O1", True), ("O2", True), (None, True)])
def test_the_reference_commands_flags_all_parse_and_apex_o0_turns_amp_off(level, amp):
    import main

    level_flag = ["--amp-opt-level", level] if level else []
    cfg = get_config(main.parse_args([*REFERENCE_COMMAND, *level_flag]))
    assert (cfg.DATA.ZIP_MODE, cfg.DATA.CACHE_MODE, cfg.TRAIN.ACCUMULATION_STEPS) == (True, "part", 2)
    assert (cfg.FUSED_WINDOW_PROCESS, cfg.FUSED_LAYERNORM, cfg.TRAIN.OPTIMIZER.NAME) == (True, True, "sgd")
    assert (cfg.AMP_ENABLE, cfg.AMP_OPT_LEVEL) == (amp, level or "")
    notes = reference_only_notes(cfg)
    assert [n.split(":")[0] for n in notes] == [*([f"AMP_OPT_LEVEL {level}"] if level else []),
                                                "FUSED_WINDOW_PROCESS", "FUSED_LAYERNORM"]
