"""oneDNN's linear kernel for CPU inference: F.linear's answers within fp32 rounding for every layout the model
gives it, plain F.linear wherever it does not apply, and every model family within 1e-5 of its plain self."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CFG

from config import load_config
from models import build_model
from models.cpu_inference import InferenceLinear, onednn_linear_works, use_onednn_linears

pytestmark = pytest.mark.skipif(not onednn_linear_works(), reason="this torch build has no working oneDNN linear")


def _layer(bias: bool, gelu: bool) -> tuple[torch.nn.Linear, InferenceLinear]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40, bias=bias)
    return linear, InferenceLinear(linear, gelu=gelu)


def _plain(linear: torch.nn.Linear, x: torch.Tensor, gelu: bool) -> torch.Tensor:
    out = F.linear(x, linear.weight, linear.bias)
    return F.gelu(out) if gelu else out


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
@pytest.mark.parametrize("layout", ["2d", "4d", "transposed", "sliced"])
def test_the_kernel_is_f_linear_within_fp32_rounding_for_every_layout(bias, gelu, layout):
    linear, fast = _layer(bias, gelu)
    base = torch.randn(6, 5, 7, 24)
    x = {"2d": base.reshape(-1, 24), "4d": base, "transposed": base.transpose(1, 2),
         "sliced": torch.randn(6, 30, 50)[:, 3:27:2, 5:29]}[layout]
    with torch.no_grad():
        out = fast(x)
        expected = _plain(linear, x, gelu)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_where_a_gradient_is_needed_the_layer_is_f_linear_and_trains():
    linear, fast = _layer(True, True)
    x = torch.randn(8, 24, requires_grad=True)
    fast(x).square().sum().backward()
    grads = x.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone()
    x.grad = linear.weight.grad = linear.bias.grad = None
    _plain(linear, x, True).square().sum().backward()
    for got, expected in zip(grads, (x.grad, linear.weight.grad, linear.bias.grad)):
        assert torch.equal(got, expected)


def test_under_bf16_autocast_the_layer_computes_as_autocast_does():
    linear, fast = _layer(True, False)
    x = torch.randn(8, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = fast(x), _plain(linear, x, False)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


@pytest.mark.parametrize("family, key", [("swin", "SWIN"), ("swinv2", "SWINV2"), ("swin_mlp", "SWIN_MLP")])
def test_every_model_family_answers_within_1e_5_of_its_plain_self(family, key):
    torch.manual_seed(0)
    opts = ["MODEL.TYPE", family, f"MODEL.{key}.EMBED_DIM", "16", f"MODEL.{key}.DEPTHS", "[2, 2]",
            f"MODEL.{key}.NUM_HEADS", "[2, 4]", f"MODEL.{key}.WINDOW_SIZE", "4"]
    plain = build_model(load_config(TINY_CFG, opts)).eval()
    with torch.no_grad():  # random weights everywhere (V2 starts with zero post-norm gains)
        for param in plain.parameters():
            param.add_(0.05 * torch.randn(param.shape))
    fast = copy.deepcopy(plain)
    assert use_onednn_linears(fast) == sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        out, expected = fast(images), plain(images)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert out.abs().max() > 1e-3  # the check compares answers, not zeros
