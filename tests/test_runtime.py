"""runtime.py, the one place for device, DDP and precision: numeric switches follow the config, compile falls back in
one line, oneDNN linears and fused optimizer kernels on CPU, launcher variables, NCCL and SLURM settings.
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from bad_inputs import assert_one_error_line, call
from conftest import TINY_CFG, assert_user_error, run_main

import main as main_module
from config import get_config, load_config
from models import build_model
from models.cpu_linear import OneDnnLinear
from optimizer import build_optimizer
from runtime import Runtime, init_runtime, prepare_for_inference, prepare_for_training, shutdown_runtime


@pytest.fixture
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("allowed", [True, False])
def test_tf32_follows_the_config_key_so_fp32_runs_stay_fp32(allowed, restore_tf32):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not allowed
    rt = init_runtime(load_config(TINY_CFG, ["ALLOW_TF32", str(allowed), "DEVICE", "cpu"]))
    try:
        assert torch.backends.cuda.matmul.allow_tf32 is allowed and torch.backends.cudnn.allow_tf32 is allowed
        assert rt.describe() == "device cpu, rank 0 of 1, precision fp32"
    finally:
        shutdown_runtime(rt)


def _tiny_model() -> torch.nn.Module:
    from models import build_model

    torch.manual_seed(0)
    return build_model(load_config(TINY_CFG))


@pytest.mark.parametrize("dtype, tolerance", [(None, 1e-5), (torch.bfloat16, 2e-3)])
def test_compiled_inference_is_the_eager_model_and_its_time_is_logged(dtype, tolerance):
    """fp32 within 1e-5; under bf16 autocast within a few steps of bf16 (the tiny model's logits reach about
    0.07, resolved to about 3e-4; eager bf16 is 4e-4 from fp32, compiled 5e-4 from eager when written)."""
    model, lines = _tiny_model(), []
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)  # noqa: E731
    compiled = prepare_for_inference(model, images, "on", lines.append, autocast)
    assert compiled is not model and model.training is False
    assert len(lines) == 1 and re.fullmatch(r"compiled the model for inference in \d+\.\ds .*", lines[0]), lines
    with torch.no_grad(), autocast():
        torch.testing.assert_close(compiled(images * 2).float(), model(images * 2).float(), atol=tolerance, rtol=0)


def test_a_failing_compile_falls_back_to_the_eager_model_with_one_line_and_off_leaves_the_model():
    model, lines = _tiny_model(), []
    images = torch.randn(2, 3, 32, 32)
    assert prepare_for_inference(model, images, "on", lines.append, backend="no_such_backend") is model
    assert len(lines) == 1 and lines[0].startswith("torch.compile failed (") and "running the model eagerly" in lines[0]
    assert prepare_for_inference(model, images, "off", lines.append) is model and len(lines) == 1
    assert not any(isinstance(m, OneDnnLinear) for m in model.modules())


def test_cpu_auto_runs_the_linear_layers_on_onednn_with_the_same_state_and_answers_within_1e_5():
    plain, lines = _tiny_model(), []
    model = _tiny_model()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert prepare_for_inference(model, images, "auto", lines.append) is model and not model.training
    linears = sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    swapped = [m for m in model.modules() if isinstance(m, OneDnnLinear)]
    assert len(swapped) == linears and not any(type(m) is torch.nn.Linear for m in model.modules())
    assert lines == [f"inference on CPU: {linears} linear layers on oneDNN's kernel (TEST.COMPILE off keeps ATen's)"]
    assert plain.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain.eval()(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("setting, amp, compiling, swaps", [
    (True, None, False, True), (False, None, False, False), (True, torch.bfloat16, False, False),
    (True, None, True, False)])
def test_cpu_training_runs_the_linear_layers_on_onednn_only_in_eager_fp32_with_the_key_on(setting, amp, compiling,
                                                                                        swaps):
    """TRAIN.ONEDNN_LINEAR on, fp32, no COMPILE: every linear layer swapped, one log line, the state dict as it
    was; bf16 autocast, COMPILE or the key off: the model as built, nothing logged."""
    model, lines = _tiny_model().train(), []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    prepare_for_training(model, Runtime(torch.device("cpu"), amp_dtype=amp), setting, compiling, lines.append)
    swapped = sum(isinstance(m, OneDnnLinear) for m in model.modules())
    assert swapped == (linears if swaps else 0) and model.training
    expected = f"training on CPU: {linears} linear layers on oneDNN's kernel (TRAIN.ONEDNN_LINEAR False keeps ATen's)"
    assert lines == ([expected] if swaps else [])
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_a_cpu_run_steps_with_fused_kernels_that_update_as_the_foreach_ones(name):
    """Training on a CPU builds the fused optimizer (one kernel over all parameters): its updates are those of the
    foreach kernels within fp32 rounding, weight decay and momentum included."""
    assert Runtime(torch.device("cpu")).fused_optimizer
    config = load_config(TINY_CFG, ["TRAIN.OPTIMIZER.NAME", repr(name)])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    trained = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_model(config)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = build_optimizer(config, model, 1e-2, fused=fused)
        assert all(bool(group["fused"]) is fused for group in optimizer.param_groups)
        for _ in range(3):
            model(images).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        trained.append(model.state_dict())
    moved = max((trained[0][k] - initial[k]).abs().max() for k in trained[0])
    assert moved > 1e-4
    for key, value in trained[0].items():
        torch.testing.assert_close(value, trained[1][key], rtol=1e-5, atol=1e-6)


FAULTS_OF_A_REUSED_BUFFER = """
import resource, sys, torch
sys.path.insert(0, ".")
from runtime import keep_freed_memory
kept = sys.argv[1] == "kept" and keep_freed_memory()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 18).sum()  # 64 MiB, freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(kept), min(faults[2:]))
"""


def test_a_cpu_process_keeps_freed_memory_so_a_reused_buffer_faults_in_no_new_pages():
    """glibc's default maps every large tensor afresh (64 MiB: about 16,000 page faults each time); with freed
    memory kept the second and later tensors reuse the pages. Own processes: the setting is process-wide."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = {}
    for mode in ("default", "kept"):
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_REUSED_BUFFER, mode], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
        results[mode] = (int(out[0]), int(out[1]))
    if results["kept"][0] == 0:
        pytest.skip("this C library has no glibc mallopt")
    assert results["default"][1] > 10_000, results
    assert results["kept"][1] < 100, results


# Launcher variables no process of a job can have: name -> (environment, words the one error line holds).
LAUNCHER_CASES = {
    "rank not a number": ({"RANK": "abc", "WORLD_SIZE": "2"}, ("RANK is 'abc'",)),
    "local rank not a number": ({"LOCAL_RANK": "abc"}, ("LOCAL_RANK is 'abc'",)),
    "negative local rank": ({"LOCAL_RANK": "-3"}, ("LOCAL_RANK is '-3'",)),
    "rank in another script": ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "٣"}, ("LOCAL_RANK is '٣'",)),
    "rank without a world": ({"RANK": "1"}, ("RANK 1, WORLD_SIZE 1", "describe no process")),
    "world without a rank": ({"WORLD_SIZE": "2"}, ("WORLD_SIZE is 2 but RANK is not set", "torchrun")),
    "world of none": ({"RANK": "0", "WORLD_SIZE": "0"}, ("WORLD_SIZE is '0'", "at least 1")),
    "negative world": ({"RANK": "0", "WORLD_SIZE": "-1"}, ("WORLD_SIZE is '-1'",)),
    "rank past the world": ({"RANK": "2", "WORLD_SIZE": "2"}, ("RANK 2, WORLD_SIZE 2",)),
    "local rank past the rank": ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, ("LOCAL_RANK 1",)),
    "slurm task count not a number": ({"SLURM_PROCID": "0", "SLURM_NTASKS": "x"}, ("SLURM_NTASKS is 'x'",)),
    "slurm rank past the tasks": ({"SLURM_PROCID": "5", "SLURM_NTASKS": "2"}, ("SLURM_PROCID 5, SLURM_NTASKS 2",)),
}
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.mark.parametrize("name", sorted(LAUNCHER_CASES))
def test_launcher_variables_that_describe_no_process_are_one_line(name, monkeypatch, tmp_path, capsys):
    environment, fragments = LAUNCHER_CASES[name]
    for variable in LAUNCHER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    argv = ["--cfg", TINY_CFG, "--output", str(tmp_path), "--opts", "DATA.DATASET", "digits"]
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, *fragments)
    assert os.listdir(tmp_path) == []


def test_a_launched_process_with_a_bad_variable_exits_with_one_line(tmp_path):
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path), "--opts", "DATA.DATASET", "digits",
                      env={"RANK": "abc", "WORLD_SIZE": "2"})
    assert_user_error(result, "RANK is 'abc'")


def test_the_reference_local_rank_flag_is_taken_and_a_negative_one_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = main_module.parse_args(["--cfg", TINY_CFG, "--local_rank", "0"])
    assert get_config(args).LOCAL_RANK == 0
    code, out, err = call(main_module.main, ["--cfg", TINY_CFG, "--local_rank", "-1", "--output", str(tmp_path)],
                          capsys)
    assert_one_error_line(code, out, err, "--local_rank is -1")


def test_nccl_is_bound_to_the_ranks_gpu_and_every_backend_waits_long_enough():
    from runtime import COLLECTIVE_TIMEOUT, process_group_options

    gpu = process_group_options(torch.device("cuda", 3), rank=5, world_size=8)
    assert gpu == {"backend": "nccl", "rank": 5, "world_size": 8, "timeout": COLLECTIVE_TIMEOUT,
                   "device_id": torch.device("cuda", 3)}
    cpu = process_group_options(torch.device("cpu"), rank=1, world_size=2)
    assert cpu["backend"] == "gloo" and "device_id" not in cpu and cpu["timeout"] == COLLECTIVE_TIMEOUT
    assert COLLECTIVE_TIMEOUT.total_seconds() >= 30 * 60  # NCCL's own default (10 min) fails a long rank-0 save


@pytest.mark.parametrize("job_ids, distinct", [(("41", "42", "9041"), True), (("", "x1"), False)])
def test_slurm_jobs_on_one_node_meet_at_their_own_port(job_ids, distinct, monkeypatch):
    from runtime import _slurm_rendezvous

    ports = []
    for job_id in job_ids:
        for name in ("MASTER_PORT", "MASTER_ADDR"):
            monkeypatch.setenv(name, "")  # recorded, so what _slurm_rendezvous writes is undone after the test
            monkeypatch.delenv(name)
        monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[003-004]")
        monkeypatch.setenv("SLURM_JOB_ID", job_id)
        _slurm_rendezvous()
        assert os.environ["MASTER_ADDR"] == "gpu003"
        ports.append(int(os.environ["MASTER_PORT"]))
    assert all(1024 < port < 65536 for port in ports)
    assert len(set(ports)) == (len(ports) if distinct else 1)
    monkeypatch.setenv("MASTER_PORT", "12345")
    _slurm_rendezvous()
    assert os.environ["MASTER_PORT"] == "12345"  # a port the job sets wins
