"""oneDNN's inner-product kernel for the linear layers of a model that runs in fp32 on a CPU.

ATen computes nn.Linear on CPU by MKL's sgemm; oneDNN's fp32 inner product (the kernel torch.compile's CPU
backend and IPEX use), fed the model's own dense weights, ran Swin-T's linear layers 1.3-1.8x faster on the
2-core machine measured here and applies fc1's GELU in the same pass. In training it computes the forward pass
and the input's gradient (itself a linear layer, with the transposed weight); the weight's gradient, a reduction
over every token where oneDNN measured slower, stays with ATen. Outputs and gradients equal F.linear's within fp32
rounding. The layers keep the model's parameters under the same names, so the state dict is unchanged; wherever
the kernel does not apply (autocast is on, the tensors are not fp32 on the CPU) a layer is plain F.linear.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from models.hierarchy import Mlp


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


class _TrainableOneDnnLinear(torch.autograd.Function):
    """x W^T + b for rows x (tokens, in), whose forward pass and input gradient run on oneDNN and weight and bias
    gradients on ATen. Rows in and rows out: a view made inside a custom function could not be changed in place
    (SwinV2's bias MLP applies an in-place ReLU), so the caller reshapes."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(rows, weight, bias, gelu=False)  # tokens, out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad_weight = grad_bias = None
        # dy W: a linear layer with weight W^T (in, out), given as the transposed view: oneDNN reorders every
        # weight into its blocked layout anyway, so a transposed copy first would be a second pass for nothing
        if ctx.needs_input_grad[0]:
            grad_rows = _onednn_linear(grad_out, weight.t(), None, gelu=False)  # tokens, in
        if ctx.needs_input_grad[1]:
            grad_weight = grad_out.t().mm(rows)  # out, in
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_rows, grad_weight, grad_bias


class OneDnnLinear(nn.Module):
    """nn.Linear's parameters (optionally followed by the exact GELU) computed by oneDNN where it applies."""

    def __init__(self, linear: nn.Linear, gelu: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.gelu = linear.in_features, linear.out_features, gelu
        self.weight, self.bias = linear.weight, linear.bias

    def _applies(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._applies(x):
            out = F.linear(x, self.weight, self.bias)
        elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, self.weight, self.bias)):
            rows = _TrainableOneDnnLinear.apply(x.reshape(-1, self.in_features), self.weight, self.bias)
            out = rows.view(*x.shape[:-1], self.out_features)
        else:
            return _onednn_linear(x, self.weight, self.bias, self.gelu)
        return F.gelu(out) if self.gelu else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gelu={self.gelu}"


def onednn_linear_works() -> bool:
    """Whether this torch build has oneDNN's linear kernel and it gives F.linear's answer on this CPU."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    x, weight, bias, grad = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3), torch.randn(5, 3)
    try:
        out = _onednn_linear(x, weight, bias, gelu=True)
        grad_x = _onednn_linear(grad, weight.t(), None, gelu=False)  # the input gradient's call: a transposed view
    except RuntimeError:
        return False
    return (torch.allclose(out, F.gelu(F.linear(x, weight, bias)), atol=1e-5, rtol=1e-5)
            and torch.allclose(grad_x, grad.mm(weight), atol=1e-5, rtol=1e-5))


def use_onednn_linears(model: nn.Module) -> int:
    """Swap the model's nn.Linear layers (in place) for OneDnnLinear, fusing each Mlp's GELU into its fc1.

    Returns:
        The number of layers swapped.
    """
    swapped = 0
    for module in list(model.modules()):
        if isinstance(module, Mlp) and isinstance(module.act, nn.GELU) and module.act.approximate == "none":
            module.fc1, module.act = OneDnnLinear(module.fc1, gelu=True), nn.Identity()
            swapped += 1
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, OneDnnLinear(child))
                swapped += 1
    return swapped
