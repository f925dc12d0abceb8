"""The one place for device, process group, precision and DDP.

Everything is decided once from the config and the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK); without them the run is a world of one with no process group.
Model and data code get a `Runtime` and never look at devices or ranks themselves.
"""

import contextlib
import ctypes
import inspect
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from yacs.config import CfgNode

from models.cpu_linear import onednn_linear_works, use_onednn_linears
from utils import ConfigError, UserError, announce_user_error

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

    @property
    def fused_optimizer(self) -> bool:
        """Whether torch's fused AdamW and SGD run here: one kernel over all parameters that skips an update on a
        device flag (on a 2-core CPU, Swin-T's AdamW step took 21 ms against 67 ms for the foreach kernels)."""
        return self.device.type in ("cpu", "cuda")

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

    def all_gather_object(self, obj: Any) -> list:
        """`obj` of every rank, by rank (a list of one in a world of one)."""
        if not self.is_distributed:
            return [obj]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank, so a choice made on rank 0 (which checkpoint to resume) holds everywhere."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agreed(self, action: Callable[[], Any]) -> Any:
        """Run `action` on every rank; when it raised a UserError on any rank, raise the first one on every rank.

        Every rank must call it at the same point, so that a mistake seen by one rank (its node lacks
        the data, say) stops all of them together with one message, instead of leaving the others
        waiting in a collective.
        """
        try:
            result, error = action(), None
        except UserError as err:
            result, error = None, err
        messages = self.all_gather_object(str(error) if error is not None else None)
        first = next((m for m in messages if m is not None), None)
        if first is not None:
            agreed = error if error is not None and str(error) == first else UserError(first)
            agreed.agreed = True  # every rank raises it: rank 0 alone reports it
            if self.is_distributed:
                announce_user_error(agreed, show=self.is_main)
                self.barrier()  # every rank now exits with 2, even when the launcher's SIGTERM comes first
            raise agreed
        return result

    def rng_state(self) -> dict:
        """This process's random generators (this device's CUDA one included), in types `weights_only` accepts."""
        state = {
            "python": random.getstate(),
            "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
            "torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict) -> None:
        """Restore what `rng_state` saved; a CUDA state is restored only onto a CUDA device."""
        version, *rest = state["python"]
        random.setstate((version, tuple(rest[0]), *rest[1:]))
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every device of the saving node
            cuda = cuda[self.device.index] if self.device.index is not None and self.device.index < len(cuda) else None
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)

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
        if self.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            precision += " (fp32 matmuls in TF32)"
        return f"device {self.device}, rank {self.rank} of {self.world_size}, precision {precision}"


def _pick_device(config: CfgNode, local_rank: int) -> torch.device:
    wanted = config.DEVICE
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE is cuda but no CUDA device is visible; use --device cpu or auto")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {local_rank} has no CUDA device: {torch.cuda.device_count()} are visible; start "
                          "one process per GPU (torchrun --nproc_per_node), or check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank)


def _pick_amp_dtype(config: CfgNode, device: torch.device) -> Optional[torch.dtype]:
    """fp16/bf16 on CUDA when AMP is on; CPU runs fp32 unless bf16 is asked for explicitly."""
    if not config.AMP_ENABLE:
        return None
    if device.type == "cuda":
        return _AMP_DTYPES[config.AMP_DTYPE]
    return torch.bfloat16 if config.AMP_DTYPE == "bf16" else None


def _first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as `gpu[003-005,9],cpu1` (here `gpu003`)."""
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist.strip())
    if not match:
        raise ConfigError(f"SLURM_JOB_NODELIST {nodelist!r} names no host; set MASTER_ADDR to the first node")
    return match.group(1) + (match.group(2) or "")


_LAUNCH_FIX = "launch with torchrun (or srun), which sets RANK, WORLD_SIZE and LOCAL_RANK together, or unset it"


def _launcher_number(name: str, default: str = "0", least: int = 0) -> int:
    """The launcher variable `name` as a whole number of at least `least`, or one ConfigError naming it."""
    value = os.environ.get(name, default)
    if not (value.strip().isascii() and value.strip().isdigit()) or int(value) < least:
        raise ConfigError(f"launcher variable {name} is {value!r}, not a whole number of at least {least}; "
                          f"{_LAUNCH_FIX}")
    return int(value)


def launcher_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables, else from `srun`'s, else a world of one; a value
    that cannot describe a process of a job is one ConfigError naming the variable."""
    env = os.environ
    if "RANK" in env or "WORLD_SIZE" in env:
        world_size = _launcher_number("WORLD_SIZE", "1", least=1)
        if "RANK" not in env and world_size > 1:
            raise ConfigError(f"launcher variable WORLD_SIZE is {world_size} but RANK is not set; {_LAUNCH_FIX}")
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        rank, local_rank = _launcher_number("RANK"), _launcher_number("LOCAL_RANK")
    elif "SLURM_PROCID" in env and _launcher_number("SLURM_NTASKS", "1", least=1) > 1:
        names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
        rank, world_size, local_rank = (_launcher_number("SLURM_PROCID"), _launcher_number("SLURM_NTASKS"),
                                        _launcher_number("SLURM_LOCALID"))
    else:
        return 0, 1, _launcher_number("LOCAL_RANK") if "LOCAL_RANK" in env else 0
    if rank >= world_size or local_rank > rank:
        raise ConfigError(f"launcher variables {names[0]} {rank}, {names[1]} {world_size} and {names[2]} {local_rank} "
                          f"describe no process of the job (a rank must be below the world size, and a local rank "
                          f"no larger than the rank); {_LAUNCH_FIX}")
    return rank, world_size, local_rank


def slurm_port(job_id: str) -> int:
    """The rendezvous port of SLURM job `job_id`: 29500 plus the job id modulo 10,000 (ports 29500-39499), so two
    jobs sharing a node meet at different ports; 29500 where the job id is not a number."""
    return 29500 + int(job_id) % 10_000 if job_id.isascii() and job_id.isdigit() else 29500


def _slurm_rendezvous() -> None:
    """Under `srun python main.py` without torchrun: meet at the job's first node, at MASTER_PORT or slurm_port."""
    env = os.environ
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    if "MASTER_ADDR" not in env:
        env["MASTER_ADDR"] = _first_slurm_host(nodelist)
    env.setdefault("MASTER_PORT", str(slurm_port(env.get("SLURM_JOB_ID", ""))))


def meet_before_exit(timeout_s: float = 60.0) -> None:
    """Wait for every rank of a launched job (a CPU process group of its own), so that all of them have
    met the same start-up mistake before the first one exits; best effort, silent on failure."""
    _, world_size, _ = launcher_ranks()
    if world_size < 2 or dist.is_initialized():
        return
    try:
        if "RANK" not in os.environ:
            _slurm_rendezvous()
        rank = launcher_ranks()[0]
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
        dist.barrier()
        dist.destroy_process_group()
    except (RuntimeError, ValueError, OSError):
        return


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of returning it to the system.

    By default every large tensor is a fresh mapping whose pages fault in on first touch: on a 2-core CPU a Swin-T
    forward at batch 16 took 124,000 page faults and ran 1.2x slower, a training step at batch 8 63,000 and 4-9%
    slower, than with freed memory kept (allocations up to 1 GiB from the heap, or 32 MiB where an older glibc
    allows no more, and the heap never trimmed). Returns whether the setting took (False without glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        for threshold in (1 << 30, 32 << 20):
            if libc.mallopt(_M_MMAP_THRESHOLD, threshold):
                return bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        pass
    return False


# How long a rank waits for the others at a collective before the job fails: longer than torch's 10 min for NCCL,
# since one rank may be alone at work for a while (rank 0 saving a large checkpoint, a rank filling its zip cache).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def process_group_options(device: torch.device, rank: int, world_size: int) -> dict:
    """init_process_group's arguments: NCCL bound to this rank's GPU (`device_id`, so it neither guesses the device
    nor creates a context on GPU 0) or gloo on a CPU, with COLLECTIVE_TIMEOUT."""
    options = {"backend": "nccl" if device.type == "cuda" else "gloo", "rank": rank, "world_size": world_size,
               "timeout": COLLECTIVE_TIMEOUT}
    if device.type == "cuda":
        options["device_id"] = device
    return options


def init_runtime(config: CfgNode) -> Runtime:
    """Join the process group torchrun (or srun) describes, if any, and pick device and precision."""
    rank, world_size, local_rank = launcher_ranks()
    device = _pick_device(config, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        keep_freed_memory()
    # Process-wide switches, set from the config whatever the device (they change nothing on CPU).
    torch.backends.cuda.matmul.allow_tf32 = config.ALLOW_TF32
    torch.backends.cudnn.allow_tf32 = config.ALLOW_TF32
    if world_size > 1 and not dist.is_initialized():
        if "RANK" not in os.environ:
            _slurm_rendezvous()
        dist.init_process_group(**process_group_options(device, rank, world_size))
    return Runtime(device, rank, world_size, local_rank, _pick_amp_dtype(config, device))


def shutdown_runtime(rt: Runtime) -> None:
    if rt.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def prepare_for_inference(model: nn.Module, example: torch.Tensor, choice: str, log: Callable[[str], None],
                          autocast: Callable[[], Any] = contextlib.nullcontext, backend: str = "inductor") -> nn.Module:
    """The model for --eval, --throughput and predict, in eval mode, on the fastest path measured for its device.

    `choice` (TEST.COMPILE): on compiles it, by one forward on `example` whose time is logged (where compiling
    fails, the eager model, with a log line that says why); auto compiles on CUDA and on a CPU swaps the linear
    layers for oneDNN's kernel (models.cpu_linear: there a compiled Swin-T ran no faster after 73 s of
    compiling, the oneDNN layers about 1.2x faster at once); off leaves the model as built.
    """
    model.eval()
    if choice == "off":
        return model
    if choice == "auto" and example.device.type != "cuda":
        if example.device.type == "cpu" and onednn_linear_works():
            swapped = use_onednn_linears(model)
            log(f"inference on CPU: {swapped} linear layers on oneDNN's kernel (TEST.COMPILE off keeps ATen's)")
        return model
    started = time.perf_counter()
    try:
        compiled = torch.compile(model, backend=backend)
        with torch.no_grad(), autocast():
            compiled(example)
    except Exception as err:  # noqa: BLE001 - whatever the compiler raises, the eager model gives the same answers
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        log(f"torch.compile failed ({type(err).__name__}: {reason}); running the model eagerly")
        return model
    log(f"compiled the model for inference in {time.perf_counter() - started:.1f}s (TEST.COMPILE off skips it)")
    return compiled


def prepare_for_training(model: nn.Module, rt: Runtime, onednn_linear: bool, compiling: bool,
                         log: Callable[[str], None]) -> None:
    """On a CPU in fp32 and eager, swap the linear layers (in place) for oneDNN's kernel (models.cpu_linear), unless
    `onednn_linear` (TRAIN.ONEDNN_LINEAR) is off; elsewhere the model stays as built."""
    if onednn_linear and not compiling and rt.device.type == "cpu" and rt.amp_dtype is None and onednn_linear_works():
        swapped = use_onednn_linears(model)
        log(f"training on CPU: {swapped} linear layers on oneDNN's kernel (TRAIN.ONEDNN_LINEAR False keeps ATen's)")


# The buffers (index tables, shift masks) are constants: broadcasting them every forward is wasted work. Newer
# torch names this forward_sync_buffers (and warns on the old name); both keep the same buffers on every rank.
_NO_BUFFER_SYNC_PER_FORWARD = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                               inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
                               else {"broadcast_buffers": False})


def wrap_model(model: nn.Module, rt: Runtime, compile_model: bool = False) -> tuple[nn.Module, nn.Module]:
    """Move the model to the device, wrap it in DDP when there are several processes, optionally compile it.

    Returns:
        (model to call, the bare model for state dicts and flops)
    """
    bare = model.to(rt.device)
    model = bare
    if rt.is_distributed:
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(bare, device_ids=device_ids, **_NO_BUFFER_SYNC_PER_FORWARD)
    return (torch.compile(model) if compile_model else model), bare

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, so runs with the same seed draw the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
