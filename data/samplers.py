"""Samplers that shard data across ranks."""

import itertools
from typing import Iterator

import torch
from torch.utils.data import Sampler


class ExactShardSampler(Sampler[int]):
    """Indices rank, rank + world, rank + 2*world, ...: every index on exactly one rank, none padded.

    Evaluation sums correct and total counts over ranks, so accuracy with N processes equals
    accuracy with one. Ranks may get one index more or less than each other.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ShardRandomSampler(Sampler[int]):
    """This rank's fixed shard (rank::world) in a fresh order each epoch, for the zip `part` cache.

    The shard matches the images the rank cached; the order depends on the seed and the epoch
    only, so a resumed run draws the same batches. Every rank yields the longest shard's count,
    ceil(length / world): where length is not divisible by the world, a shard one short repeats
    the first index of its epoch's order (from its own, cached, shard, as DistributedSampler pads
    from the start of its order). So every rank runs the same number of steps (a rank with fewer
    would leave the others waiting in a collective) and every image is still seen each epoch.
    """

    def __init__(self, length: int, rank: int, world_size: int, seed: int = 0) -> None:
        self.indices = list(range(rank, length, world_size))
        self.num_samples = -(-length // world_size)  # the longest shard's length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=generator).tolist()]
        assert order or not self.num_samples, "an empty shard cannot pad itself (build_loader refuses fewer images)"
        return iter(order + order[: self.num_samples - len(order)])  # shards differ by one index at most

    def __len__(self) -> int:
        return self.num_samples


class ResumableSampler(Sampler[tuple[int, int]]):
    """Wraps a training sampler: yields (epoch, index) keys, and one pass can start part-way.

    The epoch travels with each index so that `SeededSamples` can draw a sample's augmentation
    from (seed, epoch, index) alone, in whichever worker loads it. `skip_next(n)` drops the first
    n indices of the next pass only; the order is the wrapped sampler's, so the remaining batches
    are exactly those the interrupted run had left.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def skip_next(self, count: int) -> None:
        self.skip = count

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip, 0
        epoch = self.epoch
        return ((epoch, index) for index in itertools.islice(iter(self.sampler), skip, None))

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)
