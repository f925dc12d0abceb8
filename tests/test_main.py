"""End-to-end runs of main.py as a user would type them: train, resume, evaluate, throughput, DDP."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_CFG, assert_user_error, run_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DIGITS = ("--opts", "DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "1000")


def tiny_run(output, *extra: str) -> subprocess.CompletedProcess:
    result = run_main("--cfg", TINY_CFG, "--output", str(output), *extra, *DIGITS)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_dir(output) -> str:
    return os.path.join(str(output), "swin_tiny_test", "default")


def eval_figures(stdout: str) -> tuple[int, str, str, str]:
    match = re.search(r"eval on (\d+) images: top-1 ([\d.]+)% top-5 ([\d.]+)% loss ([\d.]+)", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1)), match.group(2), match.group(3), match.group(4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs of the tiny Swin on the digits, straight through."""
    output = tmp_path_factory.mktemp("straight")
    tiny_run(output)
    return output


def test_training_writes_checkpoints_metrics_and_config(trained):
    folder = run_dir(trained)
    assert {"ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "best.pth", "config.yaml", "metrics.jsonl",
            "log_rank0.txt"} <= set(os.listdir(folder))
    lines = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert lines[1]["train_loss"] < lines[0]["train_loss"] and lines[1]["val_loss"] < lines[0]["val_loss"]
    train_events = EventAccumulator(os.path.join(folder, "tensorboard", "train")).Reload()
    epoch_events = EventAccumulator(os.path.join(folder, "tensorboard", "epoch")).Reload()
    assert {"train/loss", "train/lr", "train/grad_norm"} <= set(train_events.Tags()["scalars"])
    assert {"epoch/val_top1", "epoch/train_loss"} <= set(epoch_events.Tags()["scalars"])
    assert [e.step for e in epoch_events.Scalars("epoch/val_top1")] == [0, 1]


def test_demo_learns_the_digits_within_a_few_epochs(tmp_path):
    result = run_main("--cfg", "configs/demo_digits.yaml", "--output", str(tmp_path), "--opts", "TRAIN.EPOCHS", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    top1 = [float(x) for x in re.findall(r"epoch \d+: val top-1 ([\d.]+)%", result.stdout)]
    assert len(top1) == 4 and top1[-1] > top1[0] and top1[-1] > 40.0  # ten classes: chance is 10%


def test_checkpoints_load_with_weights_only(trained):
    payload = torch.load(os.path.join(run_dir(trained), "ckpt_epoch_1.pth"), weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "max_accuracy", "scaler", "epoch", "config"} <= payload.keys()
    assert payload["epoch"] == 1 and isinstance(payload["config"], str) and "SWIN:" in payload["config"]
    assert "layers.0.blocks.1.attn.relative_position_bias_table" in payload["model"]


def test_resume_reproduces_the_straight_run_exactly(trained, tmp_path):
    resumed = tmp_path / "resumed"
    tiny_run(resumed, "--resume", os.path.join(run_dir(trained), "ckpt_epoch_0.pth"))
    straight = torch.load(os.path.join(run_dir(trained), "ckpt_epoch_1.pth"), weights_only=True)["model"]
    again = torch.load(os.path.join(run_dir(resumed), "ckpt_epoch_1.pth"), weights_only=True)["model"]
    assert straight.keys() == again.keys()
    for key in straight:
        assert torch.equal(straight[key], again[key]), key


def test_auto_resume_continues_from_the_output_folder(trained, tmp_path):
    output = tmp_path / "auto"
    os.makedirs(run_dir(output))
    shutil.copy(os.path.join(run_dir(trained), "ckpt_epoch_0.pth"), run_dir(output))
    result = tiny_run(output)
    assert "auto-resume from" in result.stdout and "epoch 0:" not in result.stdout
    assert "epoch 1:" in result.stdout


def test_eval_only_evaluates(trained, tmp_path):
    ckpt = os.path.join(run_dir(trained), "ckpt_epoch_1.pth")
    result = tiny_run(tmp_path, "--eval", "--resume", ckpt)
    count, top1, _, _ = eval_figures(result.stdout)
    assert count == 360
    straight = [json.loads(line) for line in open(os.path.join(run_dir(trained), "metrics.jsonl"))][-1]
    assert float(top1) == pytest.approx(straight["val_top1"], abs=1e-3)
    assert not any(name.startswith("ckpt") for name in os.listdir(run_dir(tmp_path)))


def test_eval_without_weights_is_a_user_error(tmp_path):
    assert_user_error(run_main("--cfg", TINY_CFG, "--eval", "--output", str(tmp_path), *DIGITS), "--resume")


def test_resume_from_a_mismatched_checkpoint_is_a_user_error(trained, tmp_path):
    ckpt = os.path.join(run_dir(trained), "ckpt_epoch_1.pth")
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path), "--resume", ckpt, *DIGITS,
                      "MODEL.SWIN.EMBED_DIM", "32")
    assert_user_error(result, "does not fit this model", "--pretrained")


def test_throughput_needs_no_dataset(tmp_path):
    result = run_main("--cfg", TINY_CFG, "--throughput", "--output", str(tmp_path), "--opts", "DATA.DATASET",
                      "'imagenet'")
    assert result.returncode == 0, result.stderr
    assert re.search(r"throughput: device cpu.*compile auto, batch 8, [\d.]+ img/s", result.stdout)
    assert "compiled the model" not in result.stdout  # auto compiles on CUDA only


def test_throughput_and_eval_compile_on_request_and_log_the_compile_time(trained, tmp_path):
    result = run_main("--cfg", TINY_CFG, "--throughput", "--output", str(tmp_path), "--opts", "DATA.DATASET",
                      "'imagenet'", "TEST.COMPILE", "on")
    assert result.returncode == 0, result.stderr
    assert re.search(r"compiled the model for inference in [\d.]+s", result.stdout)
    assert re.search(r"throughput: device cpu.*compile on, batch 8, [\d.]+ img/s", result.stdout)
    ckpt = os.path.join(run_dir(trained), "ckpt_epoch_1.pth")
    plain = run_main("--cfg", TINY_CFG, "--eval", "--resume", ckpt, "--output", str(tmp_path / "plain"), *DIGITS)
    compiled = run_main("--cfg", TINY_CFG, "--eval", "--resume", ckpt, "--output", str(tmp_path / "compiled"),
                        *DIGITS, "TEST.COMPILE", "on")
    assert compiled.returncode == 0 and "compiled the model for inference" in compiled.stdout, compiled.stderr
    assert re.findall(r"eval on \d+ images: .*", compiled.stdout) == re.findall(r"eval on \d+ images: .*", plain.stdout)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "main.py"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_ddp_trains_and_evaluates_like_one_process(trained, tmp_path):
    result = torchrun("--cfg", TINY_CFG, "--output", str(tmp_path / "ddp"), *DIGITS[:-4], "TRAIN.EPOCHS", "1",
                      "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1000")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 of 2" in result.stdout and os.path.isfile(os.path.join(run_dir(tmp_path / "ddp"),
                                                                          "ckpt_epoch_0.pth"))
    ckpt = os.path.join(run_dir(trained), "ckpt_epoch_1.pth")
    one = tiny_run(tmp_path / "one", "--eval", "--resume", ckpt)
    two = torchrun("--cfg", TINY_CFG, "--output", str(tmp_path / "two"), "--eval", "--resume", ckpt, *DIGITS)
    assert two.returncode == 0, two.stderr[-3000:]
    assert eval_figures(two.stdout) == eval_figures(one.stdout)


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
