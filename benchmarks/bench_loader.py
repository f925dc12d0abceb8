"""Training-loader images/s on the real ImageNet photos, and a soak of the paper's training transform.

    python benchmarks/bench_loader.py [--workers 0,1,2] [--batches 20] [--soak 20000]

The loader rows use the paper's training pipeline (RandomResizedCrop, flip, RandAugment
rand-m9-mstd0.5-inc1, colour jitter, random erasing) at 224px, batch 32, on
../shared/datasets/imagenet-samples. The soak applies the same transform N times to those
photos (23 of them grayscale) and counts exceptions: with Pillow 13 timm's Posterize at
0 bits raised on about 0.15% of calls before the fix in data/transforms.py.
"""

import argparse
import os
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import load_config  # noqa: E402
from data.datasets import ImageFolderDataset  # noqa: E402
from data.transforms import build_transform  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "imagenet-samples", "val")


def loader_rate(dataset: ImageFolderDataset, workers: int, batches: int, batch_size: int = 32) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # start-up (worker spawn) is not counted
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - started)


def soak(transform: object, count: int) -> tuple[int, float]:
    """Apply `transform` `count` times over the photos; return the number of exceptions and calls/s."""
    paths = sorted(os.path.join(dirpath, f) for dirpath, _, files in os.walk(SAMPLES) for f in files)
    images = [Image.open(p).convert("RGB") for p in paths]
    failures, started = 0, time.perf_counter()
    for i in range(count):
        try:
            transform(images[i % len(images)])
        except Exception as err:  # noqa: BLE001 - counting every failure is the point of the soak
            failures += 1
            print(f"call {i}: {type(err).__name__}: {err}")
    return failures, count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--soak", type=int, default=20000)
    args = parser.parse_args()
    torch.manual_seed(0)
    transform = build_transform(True, load_config(os.path.join(ROOT, "configs", "swin_tiny.yaml")))
    dataset = ImageFolderDataset(SAMPLES, transform)
    print(f"training loader on {len(dataset)} ImageNet photos, 224px, batch 32, {os.cpu_count()} CPUs")
    for workers in (int(w) for w in args.workers.split(",")):
        print(f"num_workers {workers}: {loader_rate(dataset, workers, args.batches):.1f} img/s", flush=True)
    if args.soak:
        failures, rate = soak(transform, args.soak)
        print(f"soak: {args.soak} training-transform calls, {failures} exceptions, {rate:.1f} calls/s")


if __name__ == "__main__":
    main()
