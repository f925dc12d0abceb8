"""Swin-T (or SwinV2-T) beside timm and torchvision, in one process: inference, the --throughput path, a training
step and the training loader.

    python benchmarks/bench_swin.py [--family v1|v2] [--rounds 5] [--device cpu] [--modes infer_fp32,...]

v1: Swin-T at 224 against timm's swin_tiny_patch4_window7_224 (with and without its fused
attention) and torchvision's swin_t. v2: SwinV2-T window 8 at 256 against timm's
swinv2_tiny_window8_256 and torchvision's swin_v2_t. Rows: eager inference at batch 16 (--batch)
in fp32 and bf16 (autocast), ours as --eval and predict run it (runtime.prepare_for_inference with
TEST.COMPILE auto: on a CPU eager with oneDNN's linear kernel; ours_aten, the model as built, is shown
and not counted); `throughput`: our default --throughput path (the same preparation: compiled on CUDA)
against timm's benchmark.py defaults (the eager model, no AMP) at the same batch and dtype; on a CPU
it is the fp32 row again; a training step at batch 8 (forward,
backward, AdamW); `loader`: the training loader's images per CPU-second on the real ImageNet
photos (benchmarks/bench_loader.py; ours with DATA.TRANSFORM_BACKEND torch). Each round times
every model once per mode, interleaved, so drifts in machine speed hit all models alike; the
figure is the median over rounds. The last column is ours over the best of the others.
"""

import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable

import timm
import timm.layers
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_loader import loader_rates  # noqa: E402

from config import load_config  # noqa: E402
from models import build_model  # noqa: E402
from runtime import prepare_for_inference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_models(family: str) -> tuple[dict[str, torch.nn.Module], int]:
    """The models to compare and their input size."""
    torch.manual_seed(0)
    if family == "v2":
        config = load_config(os.path.join(ROOT, "configs", "swinv2", "swinv2_tiny_patch4_window8_256.yaml"))
        return {"ours": build_model(config), "timm": timm.create_model("swinv2_tiny_window8_256"),
                "torchvision": torchvision.models.swin_v2_t()}, 256
    models = {"ours": build_model(load_config(os.path.join(ROOT, "configs", "swin_tiny.yaml")))}
    timm.layers.set_fused_attn(False)
    models["timm"] = timm.create_model("swin_tiny_patch4_window7_224")
    timm.layers.set_fused_attn(True, experimental=True)
    models["timm_fused"] = timm.create_model("swin_tiny_patch4_window7_224")
    models["torchvision"] = torchvision.models.swin_t()
    return models, 224


def inference_step(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    model.eval()

    def step() -> None:
        with torch.no_grad(), torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            model(images)

    return step


def training_step(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

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


def run_mode(mode: str, models: dict, size: int, device: torch.device, rounds: int, iterations: int,
             batch: int = 16) -> dict[str, float]:
    batch = 8 if mode.startswith("train") else batch
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    targets = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    steps = {}
    dtype = torch.bfloat16 if mode == "infer_bf16" else None
    for name, model in models.items():
        if mode == "train_fp32":
            steps[name] = training_step(model, images, targets)
            continue
        if name == "ours":  # as --eval, predict and --throughput run it (prepared on a copy: it swaps layers)
            prepared = prepare_for_inference(copy.deepcopy(model), images, "auto", lambda line: None)
            steps["ours"] = inference_step(prepared, images, dtype)
            steps["ours_aten"] = inference_step(model, images, dtype)
            continue
        steps[name] = inference_step(model, images, dtype)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            seconds[name].append(time_step(step, iterations, device))
    return {name: batch / statistics.median(values) for name, values in seconds.items()}


def print_row(mode: str, rates: dict[str, float], columns: list[str], not_peers: tuple[str, ...] = ()) -> None:
    """img/s per column (blank where a column has no figure) and ours over the best of the others (but
    `not_peers`, which are shown only)."""
    best = max(rate for name, rate in rates.items() if name != "ours" and name not in not_peers)
    cells = "".join(f"{rates[name]:>13.1f}" if name in rates else f"{'':>13}" for name in columns)
    print(f"{mode:<12}{cells}{rates['ours'] / best:>12.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("v1", "v2"), default="v1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", default="infer_fp32,infer_bf16,throughput,train_fp32,loader")
    parser.add_argument("--loader-batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16, help="inference batch (the training step uses 8)")
    args = parser.parse_args()
    device = torch.device(args.device)
    models, size = build_models(args.family)
    models = {name: model.to(device) for name, model in models.items()}
    columns = ["ours", "ours_aten"] + list(models)[1:] + ["tv_tensor"]
    print(f"Swin {args.family} at {size}px: torch {torch.__version__}, timm {timm.__version__}, torchvision "
          f"{torchvision.__version__}, device {device}, threads {torch.get_num_threads()}, rounds {args.rounds} x "
          f"{args.iterations} iterations")
    print(f"{'mode':<12}" + "".join(f"{name:>13}" for name in columns) + f"{'ours/best':>12}")
    threads = torch.get_num_threads()
    for mode in args.modes.split(","):
        if mode == "loader":  # one core: ours (torch backend), timm, torchvision on PIL images and on tensors
            rates = loader_rates(args.rounds, args.loader_batches, ("ours_torch", "timm", "tv_pil", "tv_tensor"))
            torch.set_num_threads(threads)
            rates = {"ours": rates.pop("ours_torch"), "timm": rates["timm"], "torchvision": rates["tv_pil"],
                     "tv_tensor": rates["tv_tensor"]}
            print_row("loader/core", rates, columns, not_peers=("tv_tensor",))
            continue
        rates = run_mode(mode, models, size, device, args.rounds, args.iterations, args.batch)
        print_row(mode, rates, columns, not_peers=("ours_aten",))
    print("img/s (loader: images per CPU-second); timm = without, timm_fused = with its fused attention; ours_aten =\n"
          "our model as built, not prepared for inference; tv_tensor = torchvision's loader on decoded tensors,\n"
          "whose RandAugment warps bilinearly (not the paper's bicubic): both shown, not counted in ours/best")


if __name__ == "__main__":
    main()
