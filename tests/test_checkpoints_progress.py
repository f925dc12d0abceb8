"""checkpoints/progress.py: optimizer, loss-scale and progress state saved and restored by parameter name, onto
any optimizer kernel and device.
"""

import os

import pytest
import torch
from conftest import TINY_CFG, command, metrics_lines, ok, run, run_dir, stepped_optimizer, tiny_model

from checkpoints.progress import optimizer_param_names, restore_optimizer, restore_scaler
from config import load_config
from optimizer import build_optimizer
from utils import CheckpointError


def test_a_non_fused_state_resumed_into_a_fused_optimizer_keeps_it_fused():
    """A state saved by foreach kernels (another tool, or this one's CPU runs before they were fused) resumed into
    fused AdamW: the flags must stay those of this run."""
    model = tiny_model()
    saved = {"optimizer": stepped_optimizer(model, fused=False).state_dict()}
    target = build_optimizer(load_config(TINY_CFG), model, 1e-3, fused=True)
    restore_optimizer(target, saved, model, "ckpt.pth")
    assert all(group["fused"] is True and not group["foreach"] for group in target.param_groups)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    target.step()
    assert int(target.state[target.param_groups[0]["params"][0]]["step"]) == 2


@pytest.mark.parametrize("step_kind", ["tensor", "int"])
def test_a_cpu_state_resumed_into_a_fused_optimizer_on_another_device_lands_where_the_kernel_reads(step_kind):
    """A reference (or CPU) checkpoint resumed by a fused AdamW on a GPU: every state tensor, `step` included, must
    be on the parameter's device, as the fused kernel reads them. The meta device stands in for the GPU here."""
    saved = stepped_optimizer(tiny_model(), fused=False).state_dict()  # CPU tensors, the group not fused
    if step_kind == "int":  # reference checkpoints of older torch versions saved the step as a number
        saved["state"] = {i: {**v, "step": int(v["step"])} for i, v in saved["state"].items()}
    model = tiny_model().to("meta")
    target = build_optimizer(load_config(TINY_CFG), model, 1e-3, fused=False)
    for group in target.param_groups:  # this run's settings, as build_optimizer makes them on a CUDA device
        group.update(fused=True, foreach=None)
    restore_optimizer(target, {"optimizer": saved}, model, "ckpt.pth")
    for param, state in target.state.items():
        assert {key: value.device.type for key, value in state.items()} == \
            {"step": "meta", "exp_avg": "meta", "exp_avg_sq": "meta"}
        assert state["step"].dtype == torch.float32
    assert all(group["fused"] is True for group in target.param_groups)


def test_optimizer_state_follows_parameter_names_not_positions():
    """A checkpoint whose optimizer listed its parameters in another order lands on the right tensors."""
    model = tiny_model()
    optimizer = stepped_optimizer(model, fused=False)
    state = optimizer.state_dict()
    names = optimizer_param_names(model, optimizer)
    order = list(reversed(range(len(names))))  # the same state, numbered backwards
    shuffled = {"state": {order.index(i): v for i, v in state["state"].items()},
                "param_groups": [{**g, "params": [order.index(i) for i in g["params"]]}
                                 for g in state["param_groups"]]}
    payload = {"optimizer": shuffled, "optimizer_param_names": [names[order[j]] for j in range(len(names))]}
    target = build_optimizer(load_config(TINY_CFG), model, 1e-3, fused=False)
    restore_optimizer(target, payload, model, "ckpt.pth")
    for name, param in model.named_parameters():
        torch.testing.assert_close(target.state[param]["exp_avg"], optimizer.state[param]["exp_avg"], msg=name)


def test_optimizer_state_for_another_model_is_a_user_error():
    saved = {"optimizer": stepped_optimizer(tiny_model(), fused=False).state_dict()}
    other = tiny_model("MODEL.SWIN.DEPTHS", "[1, 1]")
    with pytest.raises(CheckpointError, match="optimizer state for other parameters"):
        restore_optimizer(build_optimizer(load_config(TINY_CFG), other, 1e-3, fused=False), saved, other, "x.pth")


@pytest.mark.parametrize("saved", [{}, {"scaler": {}}, {"scaler": None}], ids=["absent", "empty", "none"])
def test_an_fp16_run_resumes_checkpoints_without_a_loss_scale(saved):
    """Reference, bf16 and fp32 checkpoints carry no (or an empty) scaler state."""
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    restore_scaler(scaler, saved)
    assert scaler.get_scale() == 1024.0


def test_an_fp16_run_restores_its_loss_scale_and_others_ignore_it():
    source = torch.amp.GradScaler("cpu", enabled=True, init_scale=512.0)
    target = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    restore_scaler(target, {"scaler": source.state_dict()})
    assert target.get_scale() == 512.0
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    restore_scaler(disabled, {"scaler": source.state_dict()})
    assert not disabled.is_enabled()


def test_optimizer_moments_of_another_shape_are_refused_before_the_kernel_sees_them():
    model = tiny_model()
    saved = stepped_optimizer(model, fused=False).state_dict()
    first, second = sorted(saved["state"])[:2]
    saved["state"][first], saved["state"][second] = saved["state"][second], saved["state"][first]
    target = tiny_model()
    fused = stepped_optimizer(target, fused=True)
    with pytest.raises(CheckpointError, match="optimizer state for other parameters"):
        restore_optimizer(fused, {"optimizer": saved}, target, "x.pth")


def test_a_checkpoint_without_optimizer_state_resumes_and_says_it_is_not_exact(finished_run, tmp_path):
    path = str(tmp_path / "weights_and_progress.pth")  # auto-resume passes such a file by; --resume takes it
    payload = torch.load(os.path.join(run_dir(finished_run), "ckpt_epoch_0.pth"), weights_only=True)
    del payload["optimizer"]
    torch.save(payload, path)
    result = ok(run(command(tmp_path / "out", flags=("--resume", path))))
    assert "holds no optimizer state" in result.stdout + result.stderr
    assert "resumed from" in result.stdout and [line["epoch"] for line in metrics_lines(tmp_path / "out")] == [0, 1]
