"""Swin-T (or SwinV2-T) images/s of this project's model beside timm's and torchvision's, in one process.

    python benchmarks/bench_swin.py [--family v1|v2] [--rounds 5] [--device cpu] [--modes infer_fp32,...]

v1: Swin-T at 224 against timm's swin_tiny_patch4_window7_224 (with and without its fused
attention) and torchvision's swin_t. v2: SwinV2-T window 8 at 256 against timm's
swinv2_tiny_window8_256 and torchvision's swin_v2_t. Rows: inference at batch 16 in fp32 and
bf16 (autocast), and a training step at batch 8 (forward, backward, AdamW). Each round times
every model once per mode, interleaved, so drifts in machine speed hit all models alike; the
figure is the median over rounds. Prints img/s and the ratios ours/timm and ours/torchvision.
"""

import argparse
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

from config import load_config  # noqa: E402
from models import build_model  # noqa: E402

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


def run_mode(mode: str, models: dict, size: int, device: torch.device, rounds: int,
             iterations: int) -> dict[str, float]:
    batch = 8 if mode.startswith("train") else 16
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    targets = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    steps = {}
    for name, model in models.items():
        if mode == "train_fp32":
            steps[name] = training_step(model, images, targets)
        else:
            steps[name] = inference_step(model, images, torch.bfloat16 if mode == "infer_bf16" else None)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, step in steps.items():
            seconds[name].append(time_step(step, iterations, device))
    return {name: batch / statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("v1", "v2"), default="v1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", default="infer_fp32,infer_bf16,train_fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    models, size = build_models(args.family)
    models = {name: model.to(device) for name, model in models.items()}
    print(f"Swin {args.family} at {size}px: torch {torch.__version__}, timm {timm.__version__}, torchvision "
          f"{torchvision.__version__}, device {device}, threads {torch.get_num_threads()}, rounds {args.rounds} x "
          f"{args.iterations} iterations")
    print(f"{'mode':<12}" + "".join(f"{name:>13}" for name in models) + f"{'ours/timm*':>12}{'ours/tv':>9}")
    for mode in args.modes.split(","):
        rates = run_mode(mode, models, size, device, args.rounds, args.iterations)
        best_timm = max(rates["timm"], rates.get("timm_fused", 0.0))
        print(f"{mode:<12}" + "".join(f"{rate:>13.1f}" for rate in rates.values())
              + f"{rates['ours'] / best_timm:>12.2f}{rates['ours'] / rates['torchvision']:>9.2f}", flush=True)
    print("img/s; timm* = the faster timm model in the row; tv = torchvision")


if __name__ == "__main__":
    main()
