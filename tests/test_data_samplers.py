"""data/samplers.py: every rank's shard, padded from itself, covers the data once.
"""

import os
import zipfile

import pytest
from conftest import CIFAR10, requires_dataset

from data.datasets import ZipMapDataset
from data.samplers import ExactShardSampler, ShardRandomSampler


@requires_dataset("cifar10")
def test_part_cache_shards_cover_the_train_set_once(tmp_path):
    subset = _cifar_subset_zip(tmp_path, per_class=5)
    shards = [ZipMapDataset(subset + ".zip", subset + "_map.txt", cache_mode="part", shard=r, num_shards=3)
              for r in range(3)]
    cached = [set(d._cache) for d in shards]
    assert sorted(i for c in cached for i in c) == list(range(50))
    sampled = [sorted(ShardRandomSampler(50, r, 3, seed=0)) for r in range(3)]
    assert [set(s) for s in sampled] == cached
    full = ZipMapDataset(subset + ".zip", subset + "_map.txt", cache_mode="full")
    assert len(full._cache) == 50 and full[7][0].size == (32, 32)


def _cifar_subset_zip(tmp_path, per_class: int) -> str:
    """A small zip + map in the reference layout, cut from the shipped CIFAR-10 train.zip."""
    lines = open(os.path.join(CIFAR10, "train_map.txt")).read().splitlines()
    chosen = [line for c in range(10) for line in [x for x in lines if x.endswith(f"\t{c}")][:per_class]]
    base = str(tmp_path / "train")
    with zipfile.ZipFile(os.path.join(CIFAR10, "train.zip")) as src, zipfile.ZipFile(base + ".zip", "w") as dst:
        for line in chosen:
            dst.writestr(line.split("\t")[0], src.read(line.split("\t")[0]))
    with open(base + "_map.txt", "w") as f:
        f.write("\n".join(chosen) + "\n")
    return base


def test_exact_shard_sampler_counts_every_index_once():
    shards = [list(ExactShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


@pytest.mark.parametrize("world_size", range(2, 9))
def test_shard_random_sampler_pads_the_shorter_shards_from_themselves(world_size):
    for length in (world_size * 3 + 1, world_size * 5 - 1, 101):
        if length % world_size == 0:
            continue
        longest = -(-length // world_size)
        seen = set()
        for rank in range(world_size):
            sampler = ShardRandomSampler(length, rank, world_size, seed=3)
            for epoch in (0, 1):
                sampler.set_epoch(epoch)
                drawn = list(sampler)
                assert len(drawn) == len(sampler) == longest, (length, rank)
                assert set(drawn) == set(range(rank, length, world_size)), (length, rank)  # its own, every one
            seen |= set(drawn)
        assert seen == set(range(length))
