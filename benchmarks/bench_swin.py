"""Swin-T (or SwinV2-T) beside timm and torchvision: inference, the --throughput path, a training step and the
training loader.

    python benchmarks/bench_swin.py [--family v1|v2] [--rounds 5] [--device cpu] [--modes infer_fp32,...]
                                    [--same-allocator]

v1: Swin-T at 224 against timm's swin_tiny_patch4_window7_224 (with and without its fused attention) and
torchvision's swin_t. v2: SwinV2-T window 8 at 256 against timm's swinv2_tiny_window8_256 and torchvision's
swin_v2_t. Each model runs in its own process, as in its own tool: ours keeps freed memory as main.py's runtime
does on a CPU (runtime.keep_freed_memory), the others keep glibc's default; --same-allocator gives every process
ours, leaving models and kernels alone to differ. The processes take turns: each round times every model once per
mode, so drifts in machine speed hit all alike; a figure is the median over rounds, and ours over the best of the
others the median over rounds of that ratio within a round (benchmarks/rounds.py).

Rows: eager inference at batch 16 (--batch) in fp32 and bf16 (autocast), ours as --eval and predict run it
(runtime.prepare_for_inference, TEST.COMPILE auto: on a CPU eager with oneDNN's linear kernel); `throughput`: our
default --throughput path (the same preparation; compiled on CUDA) against timm's benchmark.py defaults (the eager
model, no AMP) at the same batch and dtype, on a CPU the fp32 row again; a training step at batch 8 (forward,
backward, AdamW), ours as the trainer runs it (runtime.prepare_for_training: on a CPU the linear layers on oneDNN;
optimizer.py's fused AdamW), the others with the AdamW their train scripts build (torch's defaults, as timm's
train.py and torchvision's reference script do); `loader`: the training loader's images per CPU-second on the
real ImageNet photos (benchmarks/bench_loader.py, in this process; ours with DATA.TRANSFORM_BACKEND torch).
ours_aten, our model as built in our process, is shown and not counted. The last column is ours over the best of
the others.
"""

import argparse
import copy
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Callable

import timm
import timm.layers
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_loader import loader_rates  # noqa: E402
from rounds import medians, paired_ratio  # noqa: E402

from config import load_config  # noqa: E402
from models import build_model  # noqa: E402
from optimizer import build_optimizer  # noqa: E402
from runtime import Runtime, keep_freed_memory, prepare_for_inference, prepare_for_training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"v1": os.path.join(ROOT, "configs", "swin_tiny.yaml"),
           "v2": os.path.join(ROOT, "configs", "swinv2", "swinv2_tiny_patch4_window8_256.yaml")}
SIZES = {"v1": 224, "v2": 256}
MODEL_NAMES = {"v1": ("ours", "ours_aten", "timm", "timm_fused", "torchvision"),
               "v2": ("ours", "ours_aten", "timm", "torchvision")}


def build_named_model(family: str, name: str) -> tuple[torch.nn.Module, int]:
    """One of the models to compare, and its input size. Every model trains with the paper's stochastic depth
    (our config's 0.2; torchvision's swin_t and swin_v2_t default to it; timm's models are given it, as
    `train.py --drop-path 0.2` does)."""
    torch.manual_seed(0)
    size = SIZES[family]
    config = load_config(CONFIGS[family])
    if name in ("ours", "ours_aten"):
        return build_model(config), size
    if name == "torchvision":
        model = torchvision.models.swin_v2_t() if family == "v2" else torchvision.models.swin_t()
        return model, size
    if family == "v2":
        return timm.create_model("swinv2_tiny_window8_256", drop_path_rate=config.MODEL.DROP_PATH_RATE), size
    timm.layers.set_fused_attn(name == "timm_fused", experimental=name == "timm_fused")
    return timm.create_model("swin_tiny_patch4_window7_224", drop_path_rate=config.MODEL.DROP_PATH_RATE), size


def inference_step(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.no_grad(), torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            model(images)

    return step


def training_step(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                  optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_step(step: Callable[[], None], iterations: int, device: torch.device) -> float:
    """Seconds per call, averaged over `iterations` after one untimed call."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iterations


def make_step(mode: str, family: str, name: str, built: torch.nn.Module, size: int, device: torch.device,
              batch: int) -> Callable[[], None]:
    """One model's call for `mode`, on a copy of the built model: ours as the trainer, --eval, --throughput and
    predict run it (ours_aten: the model as built), the others as their own scripts do."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    targets = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    model = copy.deepcopy(built)
    if mode == "train_fp32" and name == "ours":
        rt = Runtime(device)
        prepare_for_training(model, rt, True, False, lambda line: None)
        return training_step(model, images, targets, build_optimizer(load_config(CONFIGS[family]), model, 1e-4,
                                                                      fused=rt.fused_optimizer))
    if mode == "train_fp32":
        return training_step(model, images, targets, torch.optim.AdamW(model.parameters(), lr=1e-4))
    if name == "ours":
        model = prepare_for_inference(model, images, "auto", lambda line: None)
    return inference_step(model, images, torch.bfloat16 if mode == "infer_bf16" else None)


def serve_model(family: str, name: str, device_name: str, threads: int, kept_memory: bool, conn: Connection) -> None:
    """One model's own process: answers each (mode, batch, iterations) with seconds per call, until None.

    A process of ours keeps freed memory as main.py's runtime does on a CPU (the others keep glibc's default,
    as their scripts run, unless `kept_memory`)."""
    if kept_memory or name.startswith("ours"):
        keep_freed_memory()
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    built, size = build_named_model(family, name)
    built.to(device)
    steps: dict[tuple[str, int], Callable[[], None]] = {}
    for mode, batch, iterations in iter(conn.recv, None):
        if (mode, batch) not in steps:
            steps[mode, batch] = make_step(mode, family, name, built, size, device, batch)
        conn.send(time_step(steps[mode, batch], iterations, device))


class ModelProcesses:
    """A process per model, so each runs with its own allocator and library state as its own tool would; they
    take turns, so only one computes at a time."""

    def __init__(self, family: str, device: torch.device, kept_memory: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self.connections, self.processes = {}, []
        for name in MODEL_NAMES[family]:
            ours, theirs = context.Pipe()
            process = context.Process(target=serve_model, daemon=True,
                                      args=(family, name, str(device), torch.get_num_threads(), kept_memory, theirs))
            process.start()
            self.connections[name] = ours
            self.processes.append(process)

    def seconds(self, name: str, mode: str, batch: int, iterations: int) -> float:
        self.connections[name].send((mode, batch, iterations))
        return self.connections[name].recv()

    def close(self) -> None:
        for connection in self.connections.values():
            connection.send(None)
        for process in self.processes:
            process.join()


def run_mode(mode: str, models: ModelProcesses, rounds: int, iterations: int,
             batch: int = 16) -> dict[str, list[float]]:
    """img/s of every model in each round, each model timed once per round in turn."""
    batch = 8 if mode.startswith("train") else batch
    rates: dict[str, list[float]] = {name: [] for name in models.connections}
    for _ in range(rounds):
        for name in rates:
            rates[name].append(batch / models.seconds(name, mode, batch, iterations))
    return rates


def print_row(mode: str, per_round: dict[str, list[float]], columns: list[str],
              not_peers: tuple[str, ...] = ()) -> None:
    """The median img/s per column (blank where a column has no figure) and the median over rounds of ours over
    the best of the others in the same round (but `not_peers`, which are shown only)."""
    rates = medians(per_round)
    cells = "".join(f"{rates[name]:>13.1f}" if name in rates else f"{'':>13}" for name in columns)
    peers = tuple(name for name in per_round if name != "ours" and name not in not_peers)
    print(f"{mode:<12}{cells}{paired_ratio(per_round, 'ours', peers):>12.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("v1", "v2"), default="v1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", default="infer_fp32,infer_bf16,throughput,train_fp32,loader")
    parser.add_argument("--loader-batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16, help="inference batch (the training step uses 8)")
    parser.add_argument("--same-allocator", action="store_true",
                        help="every model's process keeps freed memory as ours does: models and kernels alone")
    args = parser.parse_args()
    device = torch.device(args.device)
    models = ModelProcesses(args.family, device, args.same_allocator)
    columns = list(MODEL_NAMES[args.family]) + ["tv_tensor"]
    size = SIZES[args.family]
    print(f"Swin {args.family} at {size}px: torch {torch.__version__}, timm {timm.__version__}, torchvision "
          f"{torchvision.__version__}, device {device}, threads {torch.get_num_threads()}, rounds {args.rounds} x "
          f"{args.iterations} iterations")
    print(f"{'mode':<12}" + "".join(f"{name:>13}" for name in columns) + f"{'ours/best':>12}")
    threads = torch.get_num_threads()
    for mode in args.modes.split(","):
        if mode == "loader":  # one core: ours (torch backend), timm, torchvision on PIL images and on tensors
            rates = loader_rates(args.rounds, args.loader_batches, ("ours_torch", "timm", "tv_pil", "tv_tensor"))
            torch.set_num_threads(threads)
            rates = {"ours": rates["ours_torch"], "timm": rates["timm"], "torchvision": rates["tv_pil"],
                     "tv_tensor": rates["tv_tensor"]}
            print_row("loader/core", rates, columns, not_peers=("tv_tensor",))
            continue
        rates = run_mode(mode, models, args.rounds, args.iterations, args.batch)
        print_row(mode, rates, columns, not_peers=("ours_aten",))
    models.close()
    print("img/s (loader: images per CPU-second); timm = without, timm_fused = with its fused attention; ours_aten =\n"
          "our model as built (not prepared for inference or training; trained with torch's default AdamW);\n"
          "tv_tensor = torchvision's loader on decoded tensors, whose RandAugment warps bilinearly (not the paper's\n"
          "bicubic): both shown, not counted in ours/best")


if __name__ == "__main__":
    main()
