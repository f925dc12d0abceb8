"""Sharding over ranks: every rank runs the same number of training steps in every data mode, and with the zip
`part` cache each rank caches only the images its own shard reads, validation included."""

import pytest
import torch
from conftest import config_for, image_bytes, member, write_layouts

from data import build_eval_loader, build_loader
from data.samplers import ExactShardSampler, ShardRandomSampler
from runtime import Runtime


def rank_of(rank: int, world_size: int) -> Runtime:
    return Runtime(torch.device("cpu"), rank=rank, world_size=world_size)


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


@pytest.mark.parametrize("layout", ["zip part", "zip full", "zip no", "folders"])
def test_every_rank_runs_the_same_number_of_training_steps(tmp_path, layout):
    write_layouts(str(tmp_path), {"train": 11, "val": 3})
    zip_mode, cache_mode = layout != "folders", layout.split()[-1] if layout != "folders" else "no"
    for world_size in (2, 3, 4):
        steps = []
        for rank in range(world_size):
            loader = build_loader(config_for(str(tmp_path), zip_mode, cache_mode), rank_of(rank, world_size)
                                  ).loader_train
            steps.append((len(loader), sum(1 for _ in loader)))
        batches = -(-11 // world_size) // 2  # the longest shard's full batches of 2: no image left out
        assert steps == [(batches, batches)] * world_size, (world_size, steps)


def test_part_cache_keeps_only_the_validation_images_of_the_ranks_shard(tmp_path):
    write_layouts(str(tmp_path), {"train": 11, "val": 7})
    runtime = rank_of(1, 2)
    val = build_loader(config_for(str(tmp_path), True), runtime).dataset_val
    shard = list(ExactShardSampler(7, 1, 2))
    assert sorted(val._cache) == shard == [1, 3, 5]
    assert {val.samples[i][0]: data for i, data in val._cache.items()} == {member(i): image_bytes(i) for i in shard}
    eval_loader, _, _ = build_eval_loader(config_for(str(tmp_path), True), runtime)
    assert sorted(eval_loader.dataset._cache) == list(eval_loader.sampler) == shard
    assert len(build_loader(config_for(str(tmp_path), True, "full"), runtime).dataset_val._cache) == 7
    assert not build_loader(config_for(str(tmp_path), True, "no"), runtime).dataset_val._cache
