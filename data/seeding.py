"""Per-sample random streams: a training sample's augmentation depends on (seed, epoch, index) only.

RandAugment, RandomResizedCrop, flips and random erasing draw from Python's, NumPy's and
torch's global generators. Seeding those from the sample's key before its transform makes the
augmentation independent of the number of DataLoader workers, of the batch the sample falls in
and of how many processes share the epoch, so a resumed run draws exactly what an
uninterrupted one would have drawn.
"""

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: nearby inputs give unrelated 64-bit outputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch."""
    return _mix64(_mix64(_mix64(seed) ^ epoch) ^ index) >> 1


def _seed_generators(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.random.default_generator.manual_seed(seed)


class SeededSamples(Dataset):
    """Loads `dataset[index]` for a key (epoch, index) with the generators seeded from the key.

    In a worker process the global generators are the worker's own and are left seeded; in the
    main process (DATA.NUM_WORKERS 0) they are restored afterwards, so Mixup and drop path keep
    their own stream. The DataLoader fetches a batch through `__getitems__`, which saves and restores
    them once per batch (about 0.1 ms a time) rather than once per sample.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        if get_worker_info() is not None:
            return [self._seeded(key) for key in keys]
        saved = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
        try:
            return [self._seeded(key) for key in keys]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.default_generator.set_state(saved[2])

    def _seeded(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        _seed_generators(sample_seed(self.seed, epoch, index))
        return self.dataset[index]
