"""data/seeding.py: a sample's augmentation depends on (seed, epoch, index) only.
"""

import random

import numpy as np
import pytest
import torch

from data.seeding import SeededSamples


class _RandomDraws(torch.utils.data.Dataset):
    """A sample is one draw from each global generator the augmentation uses."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([random.random(), float(np.random.rand()), torch.rand(()).item()], dtype=torch.float64)


@pytest.mark.parametrize("workers", [0, 2])
def test_seeded_samples_are_the_same_batched_alone_or_in_workers_and_leave_the_main_streams(workers):
    samples = SeededSamples(_RandomDraws(), seed=5)
    keys = [(1, i) for i in (3, 0, 7, 5, 2, 6)]
    alone = torch.stack([samples[key] for key in keys])
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    main_streams = random.random(), float(np.random.rand()), torch.rand(()).item()
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    loader = torch.utils.data.DataLoader(samples, batch_size=3, sampler=keys, num_workers=workers,
                                         generator=torch.Generator())  # its own draws off the main stream
    batched = torch.cat(list(loader))
    assert torch.equal(batched, alone)
    assert (random.random(), float(np.random.rand()), torch.rand(()).item()) == main_streams
    assert samples[(2, 3)].ne(samples[(1, 3)]).all() and samples[(1, 3)].ne(samples[(1, 4)]).all()
