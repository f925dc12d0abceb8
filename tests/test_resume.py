"""A resumed run is the run that would have happened: workers, ranks, launchers, changed settings, two runs.

The runs here use the paper's augmentation (RandAugment, colour jitter, random erasing,
Mixup/CutMix, drop path) with DataLoader workers, on the built-in digits.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import (
    ROOT,
    TINY_CFG,
    assert_same_weights,
    assert_torchrun_user_error,
    assert_user_error,
    command,
    digest,
    interrupt_after,
    metrics_lines,
    ok,
    run,
    run_dir,
    torchrun,
    weights,
)

from config import load_config
from models import build_model


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Two uninterrupted epochs with the paper's augmentation and two loader workers."""
    output = tmp_path_factory.mktemp("straight")
    ok(run(command(output)))
    return output


@pytest.mark.parametrize("name, group", [("SIGTERM", False), ("SIGHUP", True), ("SIGINT", True)],
                         ids=["SIGTERM to the main process", "SIGHUP to all", "Ctrl-C to all"])
def test_a_stop_signal_mid_epoch_with_workers_resumes_bitwise(name, group, straight, tmp_path):
    sig = getattr(signal, name)
    stopped = interrupt_after(command(tmp_path), r"train 1 \[20/", sig, group)
    assert stopped.returncode == 128 + sig, stopped.stderr[-2000:]
    assert re.search(rf"interrupted: stopped by {name}; saved .*ckpt_epoch_1_step_2\d\.pth", stopped.stderr)
    assert stopped.stderr.count("\n") == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    result = ok(run(command(tmp_path)))
    assert re.search(r"resumed from .*ckpt_epoch_1_step_2\d\.pth: epoch 1, 2\d batches done", result.stdout)
    assert_same_weights(weights(straight), weights(tmp_path))
    assert metrics_lines(tmp_path) == metrics_lines(straight)


@pytest.mark.parametrize("source", ["another folder", "its own folder"])
def test_a_run_started_with_resume_and_preempted_continues_when_its_command_is_rerun(source, straight, tmp_path):
    """A requeued job reruns its command as it was, --resume CKPT included: that carries on from the newest checkpoint
    the run wrote, not from CKPT (which the folder's later checkpoints would refuse), and ends bitwise as one run."""
    start = os.path.join(run_dir(straight), "ckpt_epoch_0.pth")
    if source == "its own folder":
        os.makedirs(run_dir(tmp_path))
        start = shutil.copy(start, run_dir(tmp_path))
    resumed = command(tmp_path, flags=("--resume", start))
    stopped = interrupt_after(resumed, r"train 1 \[20/", signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM and "rerun the same command" in stopped.stderr, stopped.stderr
    result = ok(run(resumed))
    assert re.search(r"holds later checkpoints of the run it started; continuing from the newest, "
                     r".*ckpt_epoch_1_step_2\d\.pth", result.stdout), result.stdout[-3000:]
    assert_same_weights(weights(straight), weights(tmp_path))
    assert "is finished: 2 epochs" in ok(run(resumed)).stdout


def test_ctrl_c_pressed_twice_saves_once_and_prints_no_traceback(straight, tmp_path):
    stopped = interrupt_after(command(tmp_path), r"train 1 \[20/", signal.SIGINT, group=True, again_after=0.05)
    assert stopped.returncode in (128 + signal.SIGINT, -signal.SIGINT), stopped.stderr[-2000:]  # by code or by signal
    assert stopped.stderr.count("\n") == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert re.search(r"interrupted: stopped by SIGINT; saved .*ckpt_epoch_1_step_2\d\.pth", stopped.stderr)
    result = ok(run(command(tmp_path)))
    assert re.search(r"resumed from .*ckpt_epoch_1_step_2\d\.pth", result.stdout)
    assert_same_weights(weights(straight), weights(tmp_path))


def test_resume_at_an_epoch_boundary_with_other_worker_counts_is_bitwise(straight, tmp_path):
    """The augmentation of a sample depends on (seed, epoch, index): 0 or 1 workers continue a 2-worker run."""
    for workers in ("0", "1"):
        output = tmp_path / workers
        os.makedirs(run_dir(output))
        shutil.copy(os.path.join(run_dir(straight), "ckpt_epoch_0.pth"), run_dir(output))
        ok(run(command(output, "DATA.NUM_WORKERS", workers)))
        assert_same_weights(weights(straight), weights(output))


def test_metrics_hold_one_line_per_epoch_after_kills_and_reruns(straight, tmp_path):
    """A kill between the checkpoint and the metrics line, or after an unsaved epoch, leaves metrics.jsonl
    out of step with the checkpoint; the rerun rewrites it from the checkpoint."""
    folder = run_dir(tmp_path)
    os.makedirs(folder)
    shutil.copy(os.path.join(run_dir(straight), "ckpt_epoch_0.pth"), folder)
    with open(os.path.join(folder, "metrics.jsonl"), "w", encoding="utf-8") as f:
        f.write('{"epoch": 0, "train_loss": 9.0}\n{"epoch": 1, "train_loss": 9.0}\n{"epoch": 1, "train_loss": 9.0}\n')
    killed = interrupt_after(command(tmp_path), r"train 1 \[10/", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    ok(run(command(tmp_path)))
    assert metrics_lines(tmp_path) == metrics_lines(straight)
    assert_same_weights(weights(straight), weights(tmp_path))


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_srun_style_launch_without_torchrun_equals_torchrun(straight_ddp, tmp_path):
    port = str(free_port())
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2",
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


def test_other_world_size_is_refused_on_auto_resume_and_continued_on_explicit_resume(straight, straight_ddp,
                                                                                     tmp_path):
    two_to_one = copy_run(straight_ddp, tmp_path / "a", "ckpt_epoch_0.pth")
    before = digest(two_to_one)
    assert_user_error(run(command(tmp_path / "a")), "processes 2 -> 1", "--resume")
    assert digest(two_to_one) == before
    one_to_two = copy_run(straight, tmp_path / "b", "ckpt_epoch_0.pth")
    assert_torchrun_user_error(run(command(tmp_path / "b", launcher=torchrun())), "processes 1 -> 2")
    result = ok(run(command(tmp_path / "b", launcher=torchrun(),
                            flags=("--resume", os.path.join(one_to_two, "ckpt_epoch_0.pth")))))
    assert "continuing" in result.stdout and "processes 1 -> 2" in result.stdout
    assert [line["epoch"] for line in metrics_lines(tmp_path / "b")] == [0, 1]


def test_a_mid_epoch_checkpoint_resumes_only_with_the_same_global_batch(straight, tmp_path):
    stopped = interrupt_after(command(tmp_path), r"train 1 \[10/")
    assert stopped.returncode == 128 + signal.SIGTERM
    step = next(n for n in os.listdir(run_dir(tmp_path)) if "_step_" in n)
    before = digest(run_dir(tmp_path))
    result = run(command(tmp_path, "DATA.BATCH_SIZE", "16", flags=("--resume", os.path.join(run_dir(tmp_path),
                                                                                            step))))
    assert_user_error(result, "DATA.BATCH_SIZE 32 -> 16", "ckpt_epoch_0.pth")
    assert digest(run_dir(tmp_path)) == before


def test_changed_settings_are_refused_then_continued_with_a_true_config(straight, tmp_path):
    folder = copy_run(straight, tmp_path, "ckpt_epoch_0.pth", "config.yaml", "metrics.jsonl")
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
    assert resumed[0] == metrics_lines(straight)[0] and resumed[1] != metrics_lines(straight)[1]


def test_a_finished_run_says_so_and_more_epochs_continue_the_schedule(straight, tmp_path):
    folder = copy_run(straight, tmp_path, "ckpt_epoch_1.pth", "config.yaml", "metrics.jsonl")
    before = digest(folder)
    result = ok(run(command(tmp_path)))
    assert "is finished: 2 epochs" in result.stdout and "train 1 [" not in result.stdout
    assert digest(folder) == before
    assert_user_error(run(command(tmp_path, "TRAIN.EPOCHS", "3")), "TRAIN.EPOCHS 2 -> 3")
    result = ok(run(command(tmp_path, "TRAIN.EPOCHS", "3",
                            flags=("--resume", os.path.join(folder, "ckpt_epoch_1.pth")))))
    assert "epoch 0:" not in result.stdout and "epoch 2: val top-1" in result.stdout
    lines = metrics_lines(tmp_path)
    assert [line["epoch"] for line in lines] == [0, 1, 2] and lines[:2] == metrics_lines(straight)


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
    result = ok(run(long_run))
    assert "epoch 5: val top-1" in result.stdout


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


STOP_FLAG_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from jobs.stopping import StopFlag
StopFlag.REPEAT_GRACE_S = float(sys.argv[2])
with StopFlag() as flag:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    print("still running, signal", flag.signum)
"""


def test_a_second_signal_ends_the_process_at_once_but_a_forwarded_copy_does_not():
    forwarded = run([sys.executable, "-c", STOP_FLAG_SCRIPT, ROOT, "5"])
    assert forwarded.returncode == 0 and f"still running, signal {int(signal.SIGTERM)}" in forwarded.stdout
    second = run([sys.executable, "-c", STOP_FLAG_SCRIPT, ROOT, "0"])
    assert second.returncode == -signal.SIGTERM and "still running" not in second.stdout


AFTER_THE_BLOCK_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from jobs.stopping import StopFlag
with StopFlag() as flag:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again while the loader shuts down, within the grace
time.sleep(0.1)
print("still running after the block, signal", flag.signum)
"""


def test_a_repeated_ctrl_c_after_training_stopped_is_still_the_stop_flags():
    result = run([sys.executable, "-c", AFTER_THE_BLOCK_SCRIPT, ROOT])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"still running after the block, signal {int(signal.SIGINT)}" in result.stdout


def test_a_fine_tunes_ema_starts_from_the_pretrained_weights(straight, tmp_path):
    pretrained = os.path.join(run_dir(straight), "ckpt_epoch_1.pth")
    ok(run(command(tmp_path, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.EMA_DECAY", "0.99999",
                   flags=("--pretrained", pretrained))))
    ema = torch.load(os.path.join(run_dir(tmp_path), "ckpt_epoch_0.pth"), weights_only=True)["model_ema"]
    start = weights(straight)
    for key in ("patch_embed.proj.weight", "layers.1.blocks.1.mlp.fc2.weight", "head.weight"):
        torch.testing.assert_close(ema[key], start[key], atol=1e-3, rtol=0)


def test_a_checkpoint_without_optimizer_state_resumes_and_says_it_is_not_exact(straight, tmp_path):
    path = str(tmp_path / "weights_and_progress.pth")  # auto-resume passes such a file by; --resume takes it
    payload = torch.load(os.path.join(run_dir(straight), "ckpt_epoch_0.pth"), weights_only=True)
    del payload["optimizer"]
    torch.save(payload, path)
    result = ok(run(command(tmp_path / "out", flags=("--resume", path))))
    assert "holds no optimizer state" in result.stdout + result.stderr
    assert "resumed from" in result.stdout and [line["epoch"] for line in metrics_lines(tmp_path / "out")] == [0, 1]
