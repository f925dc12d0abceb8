"""main.py end to end, as a user types it: train, evaluate, throughput, DDP, EMA, and a training loop
that learns as well as timm's train.py.
"""

import json
import math
import os
import re

import pytest
import torch
from conftest import TINY_CFG, metrics_lines, run_dir, run_main, torchrun_main, two_class_images
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DIGITS = ("--opts", "DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "1000")


def eval_figures(stdout: str) -> tuple[int, str, str, str]:
    match = re.search(r"eval on (\d+) images: top-1 ([\d.]+)% top-5 ([\d.]+)% loss ([\d.]+)", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1)), match.group(2), match.group(3), match.group(4)


def test_training_writes_checkpoints_metrics_and_config(finished_run):
    folder = run_dir(finished_run)
    assert {"ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "best.pth", "config.yaml", "metrics.jsonl",
            "log_rank0.txt"} <= set(os.listdir(folder))
    lines = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    assert [line["epoch"] for line in lines] == [0, 1]
    figures = ("train_loss", "val_loss", "val_top1", "lr")  # whether they fall: the demo-learns test below
    assert all(math.isfinite(line[key]) for line in lines for key in figures), lines
    train_events = EventAccumulator(os.path.join(folder, "tensorboard", "train")).Reload()
    epoch_events = EventAccumulator(os.path.join(folder, "tensorboard", "epoch")).Reload()
    assert {"train/loss", "train/lr", "train/grad_norm"} <= set(train_events.Tags()["scalars"])
    assert {"epoch/val_top1", "epoch/train_loss"} <= set(epoch_events.Tags()["scalars"])
    assert [e.step for e in epoch_events.Scalars("epoch/val_top1")] == [0, 1]


def test_checkpoints_load_with_weights_only(finished_run):
    payload = torch.load(os.path.join(run_dir(finished_run), "ckpt_epoch_1.pth"), weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "max_accuracy", "scaler", "epoch", "config"} <= payload.keys()
    assert payload["epoch"] == 1 and isinstance(payload["config"], str) and "SWIN:" in payload["config"]
    assert "layers.0.blocks.1.attn.relative_position_bias_table" in payload["model"]


def test_throughput_needs_no_dataset(tmp_path):
    result = run_main("--cfg", TINY_CFG, "--throughput", "--output", str(tmp_path), "--opts", "DATA.DATASET",
                      "'imagenet'")
    assert result.returncode == 0, result.stderr
    assert re.search(r"throughput: device cpu.*compile auto, batch 8, [\d.]+ img/s", result.stdout)
    assert "compiled the model" not in result.stdout  # auto compiles on CUDA only


def test_eval_only_evaluates_compiled_on_request_and_answers_as_the_run_did(finished_run, tmp_path):
    ckpt = os.path.join(run_dir(finished_run), "ckpt_epoch_1.pth")
    compiled = run_main("--cfg", TINY_CFG, "--eval", "--resume", ckpt, "--output", str(tmp_path), *DIGITS,
                        "TEST.COMPILE", "on")
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert re.search(r"compiled the model for inference in [\d.]+s", compiled.stdout)
    count, top1, _, loss = eval_figures(compiled.stdout)
    straight = metrics_lines(finished_run)[-1]
    assert count == 360 and float(top1) == pytest.approx(straight["val_top1"], abs=1e-3)
    assert float(loss) == pytest.approx(straight["val_loss"], abs=1e-3)
    assert not any(name.startswith("ckpt") for name in os.listdir(run_dir(tmp_path)))


def test_ddp_trains_and_evaluates_like_one_process(finished_run, tmp_path):
    result = torchrun_main("--cfg", TINY_CFG, "--output", str(tmp_path / "ddp"), *DIGITS[:-4], "TRAIN.EPOCHS", "1",
                           "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1000")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 of 2" in result.stdout and os.path.isfile(os.path.join(run_dir(tmp_path / "ddp"),
                                                                          "ckpt_epoch_0.pth"))
    ckpt = os.path.join(run_dir(finished_run), "ckpt_epoch_1.pth")
    two = torchrun_main("--cfg", TINY_CFG, "--output", str(tmp_path / "two"), "--eval", "--resume", ckpt, *DIGITS)
    assert two.returncode == 0, two.stderr[-3000:]
    count, top1, _, loss = eval_figures(two.stdout)
    one = metrics_lines(finished_run)[-1]  # the one-process run's validation of these weights
    assert count == 360 and float(top1) == pytest.approx(one["val_top1"], abs=1e-3)
    assert float(loss) == pytest.approx(one["val_loss"], abs=1e-3)


def test_ema_is_evaluated_saved_and_leaves_integer_buffers(tmp_path):
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path), *DIGITS, "TRAIN.EMA_DECAY", "0.9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(re.findall(r"epoch \d: EMA val top-1", result.stdout)) == 2
    payload = torch.load(os.path.join(run_dir(tmp_path), "ckpt_epoch_1.pth"), weights_only=True)
    ema, model = payload["model_ema"], payload["model"]
    index = "layers.0.blocks.0.attn.relative_position_index"
    assert ema[index].dtype == torch.int64 and torch.equal(ema[index], model[index])
    key = "layers.0.blocks.0.attn.qkv.weight"
    assert not torch.equal(ema[key], model[key]) and torch.isfinite(ema[key]).all()


def test_ddp_with_more_processes_than_validation_images(tmp_path):
    root = two_class_images(tmp_path / "data")
    result = torchrun_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", root, "--batch-size",
                           "2", "--opts", "DATA.DATASET", "'imagenet'", "MODEL.NUM_CLASSES", "2", nproc=3)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"epoch 1: val top-1 (0|50|100)\.00%", result.stdout)


TIMM_DEMO_TOP1 = 81.11
MARGIN = 4.0


def test_the_demo_learns_as_well_as_timm_train_py(tmp_path):
    """A regression guard on the training loop that needs no timm script at test time. The figures come from
    `python benchmarks/compare_timm.py --timm-train <timm repo>/train.py --recipe demo --seeds 0 1 2` (2026-12-02,
    timm 1.0.31's train.py, 2-core CPU, fp32): the demo config for 20 epochs, both tools on the same digits with the
    same recipe (RandomResizedCrop at 32px in both). Final val top-1: timm 82.22 / 80.56 / 80.56% (mean 81.11), this
    project 79.72 / 78.61 / 81.11% (mean 79.81). The widest spread over seeds was 2.5 points; the margin is 4, so a
    run fails only when it falls clearly below what timm's loop reaches. Seed 0 here reached 80.28% when written."""
    result = run_main("--cfg", "configs/demo_digits.yaml", "--output", str(tmp_path), "--opts",
                      "AUG.SMALL_IMAGE_CROP", "random_resized", "SEED", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in open(tmp_path / "swin_demo_digits" / "default" / "metrics.jsonl")]
    assert len(records) == 20
    final = records[-1]["val_top1"]
    assert final >= TIMM_DEMO_TOP1 - MARGIN, f"final top-1 {final:.2f}% < timm's {TIMM_DEMO_TOP1}% - {MARGIN}"
