"""oneDNN's inner-product kernel for the linear layers of a model that runs fp32 inference on a CPU.

ATen computes nn.Linear on CPU by MKL's sgemm; oneDNN's fp32 inner product (the kernel torch.compile's CPU
backend and IPEX use) ran Swin-T's linear layers 1.3-1.8x faster on the 2-core machine measured here and
applies fc1's GELU in the same pass. Its outputs equal F.linear's within fp32 rounding. The layers keep the
model's parameters under the same names, so the state dict is unchanged; wherever the kernel does not apply
(a gradient is needed, autocast is on, the tensors are not fp32 on the CPU) a layer is plain F.linear.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.hierarchy import Mlp


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


class InferenceLinear(nn.Module):
    """nn.Linear's parameters (optionally followed by the exact GELU) computed by oneDNN where it applies."""

    def __init__(self, linear: nn.Linear, gelu: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.gelu = linear.in_features, linear.out_features, gelu
        self.weight, self.bias = linear.weight, linear.bias

    def _applies(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._applies(x):
            return _onednn_linear(x, self.weight, self.bias, self.gelu)
        out = F.linear(x, self.weight, self.bias)
        return F.gelu(out) if self.gelu else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gelu={self.gelu}"


def onednn_linear_works() -> bool:
    """Whether this torch build has oneDNN's linear kernel and it gives F.linear's answer on this CPU."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    x, weight, bias = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    try:
        out = _onednn_linear(x, weight, bias, gelu=True)
    except RuntimeError:
        return False
    return torch.allclose(out, F.gelu(F.linear(x, weight, bias)), atol=1e-5, rtol=1e-5)


def use_onednn_linears(model: nn.Module) -> int:
    """Swap the model's nn.Linear layers (in place) for InferenceLinear, fusing each Mlp's GELU into its fc1.

    Returns:
        The number of layers swapped.
    """
    swapped = 0
    for module in list(model.modules()):
        if isinstance(module, Mlp) and isinstance(module.act, nn.GELU) and module.act.approximate == "none":
            module.fc1, module.act = InferenceLinear(module.fc1, gelu=True), nn.Identity()
            swapped += 1
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, InferenceLinear(child))
                swapped += 1
    return swapped
