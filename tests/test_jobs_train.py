"""jobs/train.py: a resumed run is the run that would have happened: workers, ranks, launchers, changed settings.

The runs here use the paper's augmentation (RandAugment, colour jitter, random erasing, Mixup/CutMix, drop path) with
DataLoader workers, on the built-in digits.
"""

import os
import re
import shutil
import signal
import subprocess

import pytest
import torch
from conftest import (
    ROOT,
    assert_same_weights,
    assert_torchrun_user_error,
    assert_user_error,
    command,
    digest,
    free_port,
    interrupt_after,
    metrics_lines,
    ok,
    run,
    run_dir,
    torchrun,
    weights,
)

from config import load_config


@pytest.mark.parametrize("name, group, again_after", [("SIGTERM", False, None), ("SIGHUP", True, None),
                                                        ("SIGINT", True, 0.05)],
                         ids=["SIGTERM to the main process", "SIGHUP to all", "Ctrl-C to all pressed twice"])
def test_a_stop_signal_mid_epoch_with_workers_resumes_bitwise(name, group, again_after, finished_run, tmp_path):
    """A second Ctrl-C while the first is being handled saves once and still prints one line."""
    sig = getattr(signal, name)
    stopped = interrupt_after(command(tmp_path), r"train 1 \[20/", sig, group, again_after)
    assert stopped.returncode in (128 + sig, -sig), stopped.stderr[-2000:]  # by code, or by a repeated signal
    assert re.search(rf"interrupted: stopped by {name}; saved .*ckpt_epoch_1_step_2\d\.pth", stopped.stderr)
    assert stopped.stderr.count("\n") == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    result = ok(run(command(tmp_path)))
    assert re.search(r"resumed from .*ckpt_epoch_1_step_2\d\.pth: epoch 1, 2\d batches done", result.stdout)
    assert_same_weights(weights(finished_run), weights(tmp_path))
    assert metrics_lines(tmp_path) == metrics_lines(finished_run)


@pytest.mark.parametrize("source", ["another folder", "its own folder"])
def test_a_run_started_with_resume_and_preempted_continues_when_its_command_is_rerun(source, finished_run, tmp_path):
    """A requeued job reruns its command as it was, --resume CKPT included: that carries on from the newest checkpoint
    the run wrote, not from CKPT (which the folder's later checkpoints would refuse), and ends bitwise as one run."""
    start = os.path.join(run_dir(finished_run), "ckpt_epoch_0.pth")
    if source == "its own folder":
        os.makedirs(run_dir(tmp_path))
        start = shutil.copy(start, run_dir(tmp_path))
    resumed = command(tmp_path, flags=("--resume", start))
    stopped = interrupt_after(resumed, r"train 1 \[20/", signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM and "rerun the same command" in stopped.stderr, stopped.stderr
    result = ok(run(resumed))
    assert re.search(r"holds later checkpoints of the run it started; continuing from the newest, "
                     r".*ckpt_epoch_1_step_2\d\.pth", result.stdout), result.stdout[-3000:]
    assert_same_weights(weights(finished_run), weights(tmp_path))
    assert "is finished: 2 epochs" in ok(run(resumed)).stdout


def test_resume_at_an_epoch_boundary_with_other_worker_counts_is_bitwise(finished_run, tmp_path):
    """The augmentation of a sample depends on (seed, epoch, index): 0 or 1 workers continue a 2-worker run."""
    for workers in ("0", "1"):
        output = tmp_path / workers
        os.makedirs(run_dir(output))
        shutil.copy(os.path.join(run_dir(finished_run), "ckpt_epoch_0.pth"), run_dir(output))
        ok(run(command(output, "DATA.NUM_WORKERS", workers)))
        assert_same_weights(weights(finished_run), weights(output))


def test_metrics_hold_one_line_per_epoch_after_kills_and_reruns(finished_run, tmp_path):
    """A kill between the checkpoint and the metrics line, or after an unsaved epoch, leaves metrics.jsonl
    out of step with the checkpoint; the rerun rewrites it from the checkpoint."""
    folder = run_dir(tmp_path)
    os.makedirs(folder)
    shutil.copy(os.path.join(run_dir(finished_run), "ckpt_epoch_0.pth"), folder)
    with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as f:
        f.write('{"epoch": 0, "train_loss": 9.0}\n{"epoch": 1, "train_loss": 9.0}\n{"epoch": 1, "train_loss": 9.0}\n')
    killed = interrupt_after(command(tmp_path), r"train 1 \[10/", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    ok(run(command(tmp_path)))
    assert metrics_lines(tmp_path) == metrics_lines(finished_run)
    assert_same_weights(weights(finished_run), weights(tmp_path))


@pytest.fixture(scope="module")
def straight_ddp(tmp_path_factory):
    output = tmp_path_factory.mktemp("straight_ddp")
    result = ok(run(command(output, launcher=torchrun())))
    ours = [line for line in result.stderr.splitlines() if line.strip() and "distributed/run.py" not in line]
    assert not ours, ours[:5]  # a run that goes well says nothing on stderr; torchrun's own banner aside
    return output


def test_sigterm_under_torchrun_resumes_bitwise_with_each_ranks_rng(straight_ddp, tmp_path):
    stopped = interrupt_after(command(tmp_path, launcher=torchrun()), r"train 1 \[10/")
    assert stopped.returncode != 0
    step_files = [n for n in os.listdir(run_dir(tmp_path)) if re.match(r"ckpt_epoch_1_step_\d+\.pth", n)]
    assert step_files, stopped.stderr[-2000:]
    payload = torch.load(os.path.join(run_dir(tmp_path), step_files[0]), weights_only=True)
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2
    assert not torch.equal(payload["rng"][0]["torch"], payload["rng"][1]["torch"])
    ok(run(command(tmp_path, launcher=torchrun())))
    assert_same_weights(weights(straight_ddp), weights(tmp_path))
    assert metrics_lines(tmp_path) == metrics_lines(straight_ddp)


def test_srun_style_launch_without_torchrun_equals_torchrun(straight_ddp, tmp_path):
    port = str(free_port())
    processes = []
    for rank in (0, 1):
        inherited = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
        env = {**inherited, "OMP_NUM_THREADS": "1", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2",
               "SLURM_LOCALID": str(rank), "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": port}
        processes.append(subprocess.Popen(command(tmp_path), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "rank 0 of 2" in outputs[0][0]
    assert_same_weights(weights(straight_ddp), weights(tmp_path))


def copy_run(source, target, *names: str) -> str:
    folder = run_dir(target)
    os.makedirs(folder)
    for name in names:
        shutil.copy(os.path.join(run_dir(source), name), folder)
    return folder


def test_other_world_size_is_refused_on_auto_resume_and_continued_on_explicit_resume(finished_run, straight_ddp,
                                                                                     tmp_path):
    two_to_one = copy_run(straight_ddp, tmp_path / "a", "ckpt_epoch_0.pth")
    before = digest(two_to_one)
    assert_user_error(run(command(tmp_path / "a")), "processes 2 -> 1", "--resume")
    assert digest(two_to_one) == before
    one_to_two = copy_run(finished_run, tmp_path / "b", "ckpt_epoch_0.pth")
    assert_torchrun_user_error(run(command(tmp_path / "b", launcher=torchrun())), "processes 1 -> 2")
    result = ok(run(command(tmp_path / "b", launcher=torchrun(),
                            flags=("--resume", os.path.join(one_to_two, "ckpt_epoch_0.pth")))))
    assert "continuing" in result.stdout and "processes 1 -> 2" in result.stdout
    assert [line["epoch"] for line in metrics_lines(tmp_path / "b")] == [0, 1]


def test_a_mid_epoch_checkpoint_resumes_only_with_the_same_global_batch(finished_run, tmp_path):
    stopped = interrupt_after(command(tmp_path), r"train 1 \[10/")
    assert stopped.returncode == 128 + signal.SIGTERM
    step = next(n for n in os.listdir(run_dir(tmp_path)) if "_step_" in n)
    before = digest(run_dir(tmp_path))
    result = run(command(tmp_path, "DATA.BATCH_SIZE", "16", flags=("--resume", os.path.join(run_dir(tmp_path),
                                                                                            step))))
    assert_user_error(result, "DATA.BATCH_SIZE 32 -> 16", "ckpt_epoch_0.pth")
    assert digest(run_dir(tmp_path)) == before


def test_changed_settings_are_refused_then_continued_with_a_true_config(finished_run, tmp_path):
    folder = copy_run(finished_run, tmp_path, "ckpt_epoch_0.pth", "config.yaml", "metrics.jsonl")
    before = digest(folder)
    result = run(command(tmp_path, "TRAIN.BASE_LR", "0.1"))
    assert_user_error(result, "TRAIN.BASE_LR 0.05 -> 0.1", "--resume", "--tag")
    assert digest(folder) == before
    result = ok(run(command(tmp_path, "TRAIN.BASE_LR", "0.1",
                            flags=("--resume", os.path.join(folder, "ckpt_epoch_0.pth")))))
    assert "TRAIN.BASE_LR 0.05 -> 0.1" in result.stdout
    assert "BASE_LR: 0.1" in open(os.path.join(folder, "config.yaml")).read()
    assert "BASE_LR: 0.05" in open(os.path.join(folder, "config_until_epoch_1.yaml")).read()
    resumed = metrics_lines(tmp_path)
    assert resumed[0] == metrics_lines(finished_run)[0] and resumed[1] != metrics_lines(finished_run)[1]


def test_a_finished_run_says_so_and_more_epochs_continue_the_schedule(finished_run, tmp_path):
    folder = copy_run(finished_run, tmp_path, "ckpt_epoch_1.pth", "config.yaml", "metrics.jsonl")
    before = digest(folder)
    result = ok(run(command(tmp_path)))
    assert "is finished: 2 epochs" in result.stdout and "train 1 [" not in result.stdout
    assert digest(folder) == before
    assert_user_error(run(command(tmp_path, "TRAIN.EPOCHS", "3")), "TRAIN.EPOCHS 2 -> 3")
    result = ok(run(command(tmp_path, "TRAIN.EPOCHS", "3",
                            flags=("--resume", os.path.join(folder, "ckpt_epoch_1.pth")))))
    assert "epoch 0:" not in result.stdout and "epoch 2: val top-1" in result.stdout
    lines = metrics_lines(tmp_path)
    assert [line["epoch"] for line in lines] == [0, 1, 2] and lines[:2] == metrics_lines(finished_run)


def test_a_rerun_may_switch_the_backend_compile_and_tf32_but_not_the_recipe():
    """The backend keeps the draws, TEST.COMPILE and ALLOW_TF32 only how it computes: a rerun may change them, as
    it may change the workers or AMP; a recipe key beside them is still reported."""
    from checkpoints.run_folder import settings_differences

    stored = load_config("tests/configs/tiny.yaml").dump()
    current = load_config("tests/configs/tiny.yaml", ("DATA.TRANSFORM_BACKEND", "torch", "TEST.COMPILE", "on",
                                                      "ALLOW_TF32", "True", "TRAIN.BASE_LR", "0.1"))
    assert settings_differences(stored, current, 1, 1) == {"TRAIN.BASE_LR": (0.05, 0.1)}
