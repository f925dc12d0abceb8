"""The one place for device, process group, precision and DDP.

Everything is decided once from the config and the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK); without them the run is a world of one with no process group.
Model and data code get a `Runtime` and never look at devices or ranks themselves.
"""

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from yacs.config import CfgNode

from utils import ConfigError

_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    """Where and how this process computes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: Optional[torch.dtype] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass, or nothing when it is off."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def make_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, enabled only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks (the tensor itself in a world of one)."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def synchronize(self) -> None:
        """Wait for queued device work, so timings are real."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def max_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return 0.0

    def describe(self) -> str:
        precision = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp_dtype]
        return f"device {self.device}, rank {self.rank} of {self.world_size}, precision {precision}"


def _pick_device(config: CfgNode, local_rank: int) -> torch.device:
    wanted = config.DEVICE
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE is cuda but no CUDA device is visible; use --device cpu or auto")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def _pick_amp_dtype(config: CfgNode, device: torch.device) -> Optional[torch.dtype]:
    """fp16/bf16 on CUDA when AMP is on; CPU runs fp32 unless bf16 is asked for explicitly."""
    if not config.AMP_ENABLE:
        return None
    if device.type == "cuda":
        return _AMP_DTYPES[config.AMP_DTYPE]
    return torch.bfloat16 if config.AMP_DTYPE == "bf16" else None


def init_runtime(config: CfgNode) -> Runtime:
    """Join the process group torchrun describes, if any, and pick device and precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(config, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world_size, local_rank, _pick_amp_dtype(config, device))


def shutdown_runtime(rt: Runtime) -> None:
    if rt.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, rt: Runtime, compile_model: bool = False) -> tuple[nn.Module, nn.Module]:
    """Move the model to the device, wrap it in DDP when there are several processes, optionally compile it.

    Returns:
        (model to call, the bare model for state dicts and flops)
    """
    bare = model.to(rt.device)
    model = bare
    if rt.is_distributed:
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        # The buffers (index tables, shift masks) are constants: broadcasting them every forward is wasted work.
        model = nn.parallel.DistributedDataParallel(bare, device_ids=device_ids, broadcast_buffers=False)
    return (torch.compile(model) if compile_model else model), bare
