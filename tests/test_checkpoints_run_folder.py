"""checkpoints/run_folder.py: the run folder's lock, auto-resume past a cut checkpoint, pruning, and the folder a
fine-tune gets (never the one its weights are in).
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from bad_inputs import image_tree
from conftest import (
    ROOT,
    TINY_CFG,
    assert_user_error,
    command,
    digest,
    free_port,
    interrupt_after,
    ok,
    run,
    run_dir,
    run_main,
)

from checkpoints.run_folder import prune_checkpoints, training_checkpoints
from config import load_config
from models import build_model
from utils import ConfigError

DIGITS = ("--opts", "DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "20")


def test_sigkill_while_saving_resumes_from_the_previous_good_checkpoint(tmp_path):
    slow_save = [sys.executable, os.path.join(ROOT, "tests", "slow_save_main.py"), "ckpt_epoch_1", "--cfg", TINY_CFG,
                 "--output", str(tmp_path), *DIGITS]
    killed = interrupt_after(slow_save, "SLOW-SAVE-STARTED", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]  # killed while saving, not ended
    files = os.listdir(run_dir(tmp_path))
    assert "ckpt_epoch_0.pth" in files and "ckpt_epoch_1.pth" not in files
    # A checkpoint truncated by something else (a copy cut short) must be skipped too.
    folder = run_dir(tmp_path)
    shutil.copy(os.path.join(folder, "ckpt_epoch_0.pth"), os.path.join(folder, "ckpt_epoch_5.pth"))
    with open(os.path.join(run_dir(tmp_path), "ckpt_epoch_5.pth"), "r+b") as f:
        f.truncate(1000)
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path), *DIGITS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"auto-resume skips .*ckpt_epoch_5\.pth", result.stdout)
    assert re.search(r"auto-resume from .*ckpt_epoch_0\.pth", result.stdout) and "epoch 1:" in result.stdout
    assert torch.load(os.path.join(run_dir(tmp_path), "ckpt_epoch_1.pth"), weights_only=True)["epoch"] == 1


def test_pruning_keeps_the_newest_and_never_the_protected(tmp_path):
    names = ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "ckpt_epoch_2_step_10.pth", "ckpt_epoch_2.pth", "best.pth"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    resumed = str(tmp_path / "ckpt_epoch_0.pth")
    prune_checkpoints(str(tmp_path), 2, (resumed,), logging.getLogger("test"))
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "ckpt_epoch_0.pth", "ckpt_epoch_2.pth",
                                            "ckpt_epoch_2_step_10.pth"]
    assert [os.path.basename(p) for p in training_checkpoints(str(tmp_path))] == [
        "ckpt_epoch_2.pth", "ckpt_epoch_2_step_10.pth", "ckpt_epoch_0.pth"]


def test_two_runs_on_one_folder_the_second_stops_and_a_dead_runs_lock_is_taken_over(tmp_path):
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": build_model(load_config(TINY_CFG)).state_dict()}, weights)
    long_run = command(tmp_path, "TRAIN.EPOCHS", "6")
    first = subprocess.Popen(long_run, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in first.stdout:
        if "train 0 [" in line:
            break
    try:
        with ThreadPoolExecutor(2) as pool:  # at once, so the first run is still training when both start
            second, evaluation = pool.map(run, (command(tmp_path), command(tmp_path, flags=("--eval", "--pretrained",
                                                                                              weights))))
        assert_user_error(second, f"{run_dir(tmp_path)} is in use", f"process {first.pid}", "--tag")
        assert_user_error(evaluation, f"{run_dir(tmp_path)} is in use", f"process {first.pid}")
        log = open(os.path.join(run_dir(tmp_path), "log_rank0.txt")).read()
        assert log.count("; output ") == 1, log  # the refused runs wrote no line into the running one's log
    finally:
        first.kill()
        first.communicate(timeout=60)
    result = ok(run(command(tmp_path, flags=("--eval", "--pretrained", weights))))  # the dead run's lock is taken
    assert "eval on 360 images" in result.stdout


def test_nodes_without_a_shared_output_folder_stop_with_one_line(tmp_path):
    port = str(free_port())
    processes = []
    for node in (0, 1):
        launcher = ("-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                    "--master_addr", "127.0.0.1", "--master_port", port)
        processes.append(subprocess.Popen(command(tmp_path / f"node{node}", launcher=launcher), cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, "OMP_NUM_THREADS": "1"}))
    outputs = [p.communicate(timeout=300) for p in processes]
    assert all(p.returncode != 0 for p in processes)
    errors = [line for _, err in outputs for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "shared by all nodes" in errors[0], errors
    codes = [code for _, err in outputs for code in re.findall(r"exitcode\s*:\s*(-?\d+)", err)]
    assert codes and set(codes) == {"2"}, outputs[1][1][-2000:]


def _tiny_weights(path, seed: int, **entries) -> str:
    torch.manual_seed(seed)
    torch.save({"model": build_model(load_config(TINY_CFG)).state_dict(), **entries}, path)
    return str(path)


def test_a_rerun_from_other_pretrained_weights_is_another_run_not_a_finished_one(tmp_path):
    """MODEL.PRETRAINED is a training setting: the same command resumes (here: is finished), other weights or none
    are refused in one line, and an explicit --resume of the run may name any (its weights are the checkpoint's)."""
    first, second = _tiny_weights(tmp_path / "a.pth", 0), _tiny_weights(tmp_path / "b.pth", 1)
    one_epoch = ("--output", str(tmp_path / "out"), "--opts", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0")
    assert run_main("--cfg", TINY_CFG, "--pretrained", first, *one_epoch).returncode == 0
    again = run_main("--cfg", TINY_CFG, "--pretrained", first, *one_epoch)
    assert again.returncode == 0 and "is finished" in again.stdout, again.stderr[-2000:]
    for other in (("--pretrained", second), ()):
        refused = run_main("--cfg", TINY_CFG, *other, *one_epoch)
        changed = f"MODEL.PRETRAINED {first} -> {second if other else ''}"
        assert_user_error(refused, "trained with other settings", changed, "--tag")
    checkpoint = str(tmp_path / "out" / "swin_tiny_test" / "default" / "ckpt_epoch_0.pth")
    resumed = run_main("--cfg", TINY_CFG, "--pretrained", second, "--resume", checkpoint, *one_epoch)
    assert resumed.returncode == 0 and "is finished" in resumed.stdout, resumed.stderr[-2000:]


def _config_of(*argv: str):
    import main
    from config import get_config

    return get_config(main.parse_args(list(argv)))


def test_a_fine_tune_never_starts_in_the_folder_of_its_pretrained_weights(tmp_path):
    from checkpoints.run_folder import finetune_tag

    assert [finetune_tag(t) for t in ("default", "finetune", "finetune_2", "finetune_x", "my_finetune")] == \
        ["finetune", "finetune_2", "finetune_3", "finetune", "finetune"]
    for tag in ("default", "finetune", "finetune_2"):  # a run, a fine-tune of it, a fine-tune of that
        stored = load_config(TINY_CFG, ("TAG", tag, "OUTPUT", os.path.join(str(tmp_path), "swin_tiny_test", tag)))
        folder = tmp_path / "swin_tiny_test" / tag
        folder.mkdir(parents=True)
        source = _tiny_weights(folder / "ckpt_epoch_1.pth", 0, config=stored.dump())
        config = _config_of("--pretrained", source, "--data-path", str(tmp_path))
        assert config.OUTPUT == str(tmp_path / "swin_tiny_test" / finetune_tag(tag)), tag
    moved = tmp_path / "swin_tiny_test" / "finetune" / "moved_here.pth"  # stored as a run tagged default
    stored = load_config(TINY_CFG, ("OUTPUT", os.path.join(str(tmp_path), "swin_tiny_test", "default")))
    _tiny_weights(moved, 0, config=stored.dump())
    assert _config_of("--pretrained", str(moved), "--data-path", str(tmp_path)).OUTPUT == \
        str(tmp_path / "swin_tiny_test" / "finetune_2")
    inside = str(tmp_path / "swin_tiny_test" / "default" / "ckpt_epoch_1.pth")
    for argv in (("--cfg", TINY_CFG, "--output", str(tmp_path)), ("--tag", "default", "--data-path", str(tmp_path))):
        with pytest.raises(ConfigError, match="lies in .*output folder of this run.*--tag"):
            _config_of(*argv, "--pretrained", inside)
    assert _config_of("--cfg", TINY_CFG, "--output", str(tmp_path), "--pretrained", inside, "--eval").EVAL_MODE


def test_fine_tuning_from_a_run_of_ours_needs_no_cfg_and_leaves_that_run_alone(class_run, tmp_path):
    source_run = class_run["root"] / "out" / "swin_tiny_test" / "default"
    before = digest(str(source_run))
    other = image_tree(str(tmp_path / "other"), classes=("x", "y"), per_class=8, val_per_class=2)
    result = run_main("--pretrained", class_run["ckpt"], "--data-path", other, "--output",
                      str(class_run["root"] / "out"), "--opts", "TRAIN.LAYER_DECAY", "0.8", "TRAIN.FREEZE_STAGES", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    run = class_run["root"] / "out" / "swin_tiny_test" / "finetune"
    assert os.path.isfile(run / "best.pth") and digest(str(source_run)) == before
    assert "the data has class 'x', which the checkpoint's 4 classes do not include; the head starts from scratch" \
        in result.stdout
    assert "frozen: patch embedding and stages 0-0" in result.stdout
    assert "layer decay 0.8: 3 layers trained at lr x0.64 (the first) to x1 (the head)" in result.stdout
