"""Restoring optimizer, loss scaler and weights from checkpoints written elsewhere: another device, precision,
optimizer kernel or module order."""

import argparse
import os

import numpy as np
import pytest
import torch
from conftest import TINY_CFG
from yacs.config import CfgNode

from checkpoints.entries import check_entries, model_state_from
from checkpoints.files import load_checkpoint_file
from checkpoints.progress import optimizer_param_names, restore_optimizer, restore_scaler
from checkpoints.weights import load_weights
from config import load_config
from models import build_model
from optimizer import build_optimizer
from utils import CheckpointError


def tiny_model(*opts: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(TINY_CFG, opts))


def stepped_optimizer(model: torch.nn.Module, fused: bool, name: str = "adamw") -> torch.optim.Optimizer:
    config = load_config(TINY_CFG, ("TRAIN.OPTIMIZER.NAME", repr(name)))
    optimizer = build_optimizer(config, model, 1e-3, fused=fused)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return optimizer


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


def test_non_finite_weights_are_an_error_naming_the_tensor():
    model = tiny_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layers.1.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite values in layers\.1\.blocks\.0\.mlp\.fc1\.weight"):
        load_weights(model, state, "diverged.pth", "")


def test_swinv2_registers_parameters_in_the_reference_order():
    """Reference optimizer states are matched by position: our V2 block must list its tensors as the reference's
    (norm1, attn, norm2, mlp), written out here from the reference module layout."""
    config = load_config(TINY_CFG, ("MODEL.TYPE", "'swinv2'", "MODEL.SWINV2.EMBED_DIM", "16", "MODEL.SWINV2.DEPTHS",
                                    "[2, 2]", "MODEL.SWINV2.NUM_HEADS", "[2, 4]", "MODEL.SWINV2.WINDOW_SIZE", "4"))
    names = [n for n, _ in build_model(config).named_parameters() if n.startswith("layers.0.blocks.0.")]
    block = "layers.0.blocks.0."
    expected = ["norm1.weight", "norm1.bias", "attn.logit_scale", "attn.q_bias", "attn.v_bias",
                "attn.cpb_mlp.0.weight", "attn.cpb_mlp.0.bias", "attn.cpb_mlp.2.weight", "attn.qkv.weight",
                "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                "mlp.fc2.weight", "mlp.fc2.bias"]
    assert names == [block + n for n in expected]


class _WritesAFile:
    """Pickles as a call to open(): unpickling it would create `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_reference_checkpoint_with_its_config_and_numpy_scalars_is_read_in_full(tmp_path):
    path = str(tmp_path / "reference.pth")
    config = CfgNode({"MODEL": CfgNode({"TYPE": "swin", "DEPTHS": [2, 2]})})
    torch.save({"model": {"w": torch.ones(2)}, "config": config, "max_accuracy": np.float64(81.2),
                "args": argparse.Namespace(cfg="x.yaml"), "seen": np.arange(3)}, path)
    payload = load_checkpoint_file(path)
    assert payload["config"].MODEL.DEPTHS == [2, 2] and payload["max_accuracy"] == 81.2
    assert payload["args"].cfg == "x.yaml" and payload["seen"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("extra", ["alone", "beside a config"])
def test_a_checkpoint_that_would_run_code_when_read_is_refused_unrun(extra, tmp_path):
    path, marker = str(tmp_path / "evil.pth"), str(tmp_path / "ran")
    payload = {"model": {"w": torch.ones(2)}, "hook": _WritesAFile(marker)}
    if extra == "beside a config":
        payload["config"] = CfgNode({"MODEL": CfgNode({"TYPE": "swin"})})
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth cannot be read: it pickles code from elsewhere \(.*open"):
        load_checkpoint_file(path)
    assert not os.path.exists(marker)


def _published_layouts() -> dict:
    """What the reference, timm's train.py, torchvision's reference scripts and Lightning save beside the weights."""
    model = tiny_model()
    optimizer = stepped_optimizer(model, fused=False).state_dict()
    scaler = torch.amp.GradScaler("cpu", enabled=True).state_dict()
    weights = model.state_dict()
    config = load_config(TINY_CFG)
    return {
        "reference": {"model": weights, "optimizer": optimizer, "lr_scheduler": {"last_epoch": 3},
                      "max_accuracy": 81.2, "scaler": scaler, "epoch": 299, "config": config},
        "timm": {"epoch": 9, "arch": "swin_tiny_patch4_window7_224", "state_dict": weights, "optimizer": optimizer,
                 "version": 2, "args": argparse.Namespace(lr=1e-3), "metric": 71.5},
        "torchvision": {"model": weights, "optimizer": optimizer, "lr_scheduler": {"last_epoch": 3}, "epoch": 9,
                        "args": argparse.Namespace(lr=1e-3), "scaler": scaler},
        "lightning": {"epoch": 9, "global_step": 900, "state_dict": weights, "optimizer_states": [optimizer],
                      "lr_schedulers": [{}], "hyper_parameters": {"lr": 1e-3}},
        "bf16 run": {"model": weights, "optimizer": optimizer, "scaler": {}, "epoch": torch.tensor(3),
                     "max_accuracy": torch.tensor(50.0), "class_names": None},
    }


@pytest.mark.parametrize("layout", ["reference", "timm", "torchvision", "lightning", "bf16 run"])
def test_the_entry_check_takes_every_published_checkpoint_layout(layout):
    payload = _published_layouts()[layout]
    check_entries(payload, f"{layout}.pth")
    assert set(model_state_from(payload, f"{layout}.pth")) == set(tiny_model().state_dict())


@pytest.mark.parametrize("entry, value, words", [
    ("max_accuracy", torch.tensor(float("inf")), "max_accuracy entry"),
    ("epoch", 3.5, "epoch entry"),
    ("scaler", {"scale": -1.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 1,
                "_growth_tracker": 0}, "scaler entry"),
    ("rng", [{"python": 1}], "rng entry"),
    ("model_ema", {"head.weight": "zeros"}, "a str, not a tensor in its model_ema entry at head.weight"),
])
def test_the_entry_check_names_the_entry_that_is_wrong(entry, value, words):
    with pytest.raises(CheckpointError, match=words):
        check_entries({**_published_layouts()["reference"], entry: value}, "x.pth")


def test_optimizer_moments_of_another_shape_are_refused_before_the_kernel_sees_them():
    model = tiny_model()
    saved = stepped_optimizer(model, fused=False).state_dict()
    first, second = sorted(saved["state"])[:2]
    saved["state"][first], saved["state"][second] = saved["state"][second], saved["state"][first]
    target = tiny_model()
    fused = stepped_optimizer(target, fused=True)
    with pytest.raises(CheckpointError, match="optimizer state for other parameters"):
        restore_optimizer(fused, {"optimizer": saved}, target, "x.pth")
