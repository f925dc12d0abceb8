"""Training-loader images/s per core on the real ImageNet photos: ours (PIL and torch backends) beside timm's and
torchvision's loaders with the paper's augmentation, and a soak of the training transform.

    python benchmarks/bench_loader.py [--rounds 5] [--batches 6] [--soak 0]

Each loader reads ../shared/datasets/imagenet-samples (1,000 photos, median 500x375), applies
RandomResizedCrop 224 (bicubic), flip, RandAugment (rand-m9-mstd0.5-inc1; torchvision's own RandAugment
at magnitude 9, bicubic on PIL images, bilinear on tensors), normalisation and random erasing 0.25, and
collates batches of 32, in this process (num_workers 0, one thread), so CPU seconds are one core's; the process
keeps freed memory, as this project's loader workers do (runtime.keep_freed_memory), for every loader. Rounds
interleave the loaders batch by batch; the figure is the median over rounds of images per CPU-second, the ratio
the median over rounds of a loader's rate over the best peer's in the same round (benchmarks/rounds.py). The soak
applies our transform N times and counts exceptions (Pillow 13 made timm's Posterize raise at 0
bits on about 0.15% of calls before the fix in data/transforms.py).
"""

import argparse
import os
import random
import sys
import time
from typing import Callable

import numpy as np
import timm
import timm.data
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rounds import medians, paired_ratio  # noqa: E402

from config import load_config  # noqa: E402
from data.datasets import ImageFolderDataset  # noqa: E402
from data.seeding import SeededSamples  # noqa: E402
from data.transforms import build_transform, fix_posterize  # noqa: E402
from runtime import keep_freed_memory  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "imagenet-samples", "val")
BATCH = 32


class _InOrder(torch.utils.data.Sampler):
    """The dataset's indices of `paths`, in that order (as (epoch, index) keys for SeededSamples when keyed)."""

    def __init__(self, samples: list, paths: list[str], keyed: bool = False) -> None:
        index = {path: i for i, (path, _) in enumerate(samples)}
        self.order = [(0, index[p]) if keyed else index[p] for p in paths]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def ours(backend: str, paths: list[str]) -> DataLoader:
    """This project's training loader: its dataset, per-sample seeding and transform."""
    config = load_config(os.path.join(ROOT, "configs", "swin_tiny.yaml"), ("DATA.TRANSFORM_BACKEND", backend))
    folder = ImageFolderDataset(SAMPLES, build_transform(True, config))
    return DataLoader(SeededSamples(folder, seed=0), batch_size=BATCH, sampler=_InOrder(folder.samples, paths, True))


def timm_loader(paths: list[str]) -> DataLoader:
    """timm's ImageDataset and training transform with the paper's augmentation (on CPU timm collates as torch)."""
    dataset = timm.data.create_dataset("", root=SAMPLES, split="")
    dataset.transform = timm.data.create_transform(
        224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel",
        interpolation="bicubic", color_jitter=0.4)
    fix_posterize(dataset.transform)  # Pillow 13 raises at 0 bits; the same fix as ours
    return DataLoader(dataset, batch_size=BATCH, sampler=_InOrder(dataset.reader.samples, paths))


def torchvision_loader(tensors: bool, paths: list[str]) -> DataLoader:
    """torchvision's ImageFolder and v2 transforms (its RandAugment: bicubic on PIL images; on decoded tensors,
    which it warps only bilinearly or nearest, bilinear)."""
    warp = v2.InterpolationMode.BILINEAR if tensors else v2.InterpolationMode.BICUBIC
    steps = [v2.RandomResizedCrop(224, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
             v2.RandomHorizontalFlip(), v2.RandAugment(2, 9, interpolation=warp),
             v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
             v2.Normalize(timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD),
             v2.RandomErasing(0.25, value="random")]
    loader = torchvision.io.decode_image if tensors else torchvision.datasets.folder.default_loader
    if tensors:
        steps.remove(steps[3])
    dataset = torchvision.datasets.ImageFolder(SAMPLES, v2.Compose(steps), loader=loader)
    return DataLoader(dataset, batch_size=BATCH, sampler=_InOrder(dataset.samples, paths))


LOADERS: dict[str, Callable[[list[str]], DataLoader]] = {
    "ours": lambda paths: ours("pil", paths),
    "ours_torch": lambda paths: ours("torch", paths),
    "timm": timm_loader,
    "tv_pil": lambda paths: torchvision_loader(False, paths),
    "tv_tensor": lambda paths: torchvision_loader(True, paths),
}
PEERS_WITH_THE_PAPERS_AUGMENTATION = ("timm", "tv_pil")


def loader_rates(rounds: int, batches: int, names: tuple[str, ...] = tuple(LOADERS)) -> dict[str, list[float]]:
    """Images per CPU-second of each loader in each round, where in every round all loaders read the same photos
    in the same order (a fresh shuffle per round) and take turns batch by batch, so drifts in the machine's speed
    fall on all of them alike."""
    torch.set_num_threads(1)
    keep_freed_memory()
    photos = sorted(os.path.join(d, f) for d, _, files in os.walk(SAMPLES) for f in files)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        paths = random.Random(r).sample(photos, (batches + 1) * BATCH)
        iterators = {}
        for name in names:
            random.seed(r)
            np.random.seed(r)
            torch.manual_seed(r)
            iterators[name] = iter(LOADERS[name](paths))
            next(iterators[name])  # the first batch is not timed
        seconds = dict.fromkeys(names, 0.0)
        for _ in range(batches):
            for name in names:
                started = time.process_time()
                next(iterators[name])
                seconds[name] += time.process_time() - started
        for name in names:
            rates[name].append(batches * BATCH / seconds[name])
    return rates


def soak(count: int) -> tuple[int, float]:
    """Apply our training transform `count` times over the photos; return the number of exceptions and calls/s."""
    transform = build_transform(True, load_config(os.path.join(ROOT, "configs", "swin_tiny.yaml")))
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--soak", type=int, default=0)
    args = parser.parse_args()
    per_round = loader_rates(args.rounds, args.batches)
    print(f"training loader, {args.rounds} rounds x {args.batches} batches of {BATCH}, images per CPU-second, the "
          f"median over rounds (x: the median over rounds of its rate over the faster of "
          f"{' and '.join(PEERS_WITH_THE_PAPERS_AUGMENTATION)} in the same round; tv_tensor warps bilinearly):")
    for name, rate in medians(per_round).items():
        print(f"  {name:<11}{rate:>8.1f}   {paired_ratio(per_round, name, PEERS_WITH_THE_PAPERS_AUGMENTATION):.2f}x")
    if args.soak:
        failures, rate = soak(args.soak)
        print(f"soak: {args.soak} training-transform calls, {failures} exceptions, {rate:.1f} calls/s")


if __name__ == "__main__":
    main()
