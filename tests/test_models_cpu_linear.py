"""models/cpu_linear.py, oneDNN's linear kernel on a CPU: F.linear's answers and gradients within fp32 rounding for
every layout the model gives it, plain F.linear wherever it does not apply, and every model family within 1e-5 of
its plain self in inference and in training.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CFG

from config import load_config
from models import build_model
from models.cpu_linear import OneDnnLinear, use_onednn_linears


def _layer(bias: bool, gelu: bool) -> tuple[torch.nn.Linear, OneDnnLinear]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40, bias=bias)
    return linear, OneDnnLinear(linear, gelu=gelu)


def _plain(linear: torch.nn.Linear, x: torch.Tensor, gelu: bool) -> torch.Tensor:
    out = F.linear(x, linear.weight, linear.bias)
    return F.gelu(out) if gelu else out


LAYOUTS = ["2d", "4d", "transposed", "sliced"]


def _input(layout: str) -> torch.Tensor:
    base = torch.randn(6, 5, 7, 24)
    return {"2d": base.reshape(-1, 24), "4d": base, "transposed": base.transpose(1, 2),
            "sliced": torch.randn(6, 30, 50)[:, 3:27:2, 5:29]}[layout]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_kernel_is_f_linear_within_fp32_rounding_for_every_layout(bias, gelu, layout):
    linear, fast = _layer(bias, gelu)
    x = _input(layout)
    with torch.no_grad():
        out = fast(x)
        expected = _plain(linear, x, gelu)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_in_training_outputs_and_every_gradient_are_f_linears_within_fp32_rounding(bias, gelu, layout):
    linear, fast = _layer(bias, gelu)
    x = _input(layout).requires_grad_()
    upstream = torch.randn(_plain(linear, x, gelu).shape)
    results = []
    for layer in (fast, lambda t: _plain(linear, t, gelu)):
        out = layer(x)
        out.backward(upstream)
        params = [linear.weight] + ([linear.bias] if bias else [])
        results.append([out.detach(), x.grad] + [p.grad for p in params])
        x.grad = linear.weight.grad = None
        if bias:
            linear.bias.grad = None
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frozen", ["input", "weight", "bias"])
def test_only_what_requires_a_gradient_gets_one(frozen):
    """A frozen weight (fine-tuning) or an input without grad: the rest still trains, as under F.linear."""
    linear, fast = _layer(True, False)
    x = torch.randn(8, 24, requires_grad=frozen != "input")
    getattr(linear, frozen if frozen != "input" else "weight").requires_grad_(frozen == "input")
    fast(x).square().sum().backward()
    got = [t.grad for t in (x, linear.weight, linear.bias)]
    x.grad = linear.weight.grad = linear.bias.grad = None
    _plain(linear, x, False).square().sum().backward()
    for g, expected in zip(got, (x.grad, linear.weight.grad, linear.bias.grad)):
        assert (g is None) == (expected is None)
        if expected is not None:
            torch.testing.assert_close(g, expected, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("family, key", [("swin", "SWIN"), ("swinv2", "SWINV2"), ("swin_mlp", "SWIN_MLP")])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_model_family_trains_within_1e_5_of_its_plain_self(family, key, checkpointing):
    """Loss and every parameter's gradient in train mode (stochastic depth drawn alike), with and without
    gradient checkpointing, which runs each block's forward pass again in the backward pass."""
    torch.manual_seed(0)
    opts = ["MODEL.TYPE", family, f"MODEL.{key}.EMBED_DIM", "16", f"MODEL.{key}.DEPTHS", "[2, 2]",
            f"MODEL.{key}.NUM_HEADS", "[2, 4]", f"MODEL.{key}.WINDOW_SIZE", "4", "MODEL.DROP_PATH_RATE", "0.3",
            "TRAIN.USE_CHECKPOINT", str(checkpointing)]
    plain = build_model(load_config(TINY_CFG, opts)).train()
    with torch.no_grad():
        for param in plain.parameters():
            param.add_(0.05 * torch.randn(param.shape))
    fast = copy.deepcopy(plain)
    use_onednn_linears(fast)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    grads = []
    for model in (fast, plain):
        torch.manual_seed(1)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        grads.append((loss.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (fast_loss, fast_grads), (plain_loss, plain_grads) = grads
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-5, rtol=0)
    assert fast_grads.keys() == plain_grads.keys()
    for name, expected in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], expected, atol=1e-5, rtol=1e-4, msg=name)
    assert max(g.abs().max() for g in plain_grads.values()) > 1e-3
