"""The runtime's process-wide numeric switches follow the config, not a fixed choice."""

import re

import pytest
import torch
from conftest import TINY_CFG

from config import load_config
from models.cpu_inference import InferenceLinear
from runtime import init_runtime, prepare_for_inference, shutdown_runtime


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
    assert not any(isinstance(m, InferenceLinear) for m in model.modules())


def test_cpu_auto_runs_the_linear_layers_on_onednn_with_the_same_state_and_answers_within_1e_5():
    plain, lines = _tiny_model(), []
    model = _tiny_model()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert prepare_for_inference(model, images, "auto", lines.append) is model and not model.training
    linears = sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    swapped = [m for m in model.modules() if isinstance(m, InferenceLinear)]
    assert len(swapped) == linears and not any(type(m) is torch.nn.Linear for m in model.modules())
    assert lines == [f"inference on CPU: {linears} linear layers on oneDNN's kernel (TEST.COMPILE off keeps ATen's)"]
    assert plain.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain.eval()(images), atol=1e-5, rtol=0)
