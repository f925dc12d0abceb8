"""data/build.py: loaders for every data source and rank; workers, part caches and class counts.
"""

import os
import resource
import zipfile

import pytest
import torch
from conftest import CIFAR10, config_for, image_bytes, member, requires_dataset, tiny_config, write_layouts

from config import load_config
from data import build_eval_loader, build_loader
from data.build import init_loader_worker
from data.make_map import map_lines
from data.samplers import ExactShardSampler
from runtime import Runtime
from utils import DataError

CPU = Runtime(torch.device("cpu"))


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_demo_loader_shapes():
    bundle = build_loader(load_config("configs/demo_digits.yaml"), CPU)
    images, targets = next(iter(bundle.loader_train))
    assert images.shape == (32, 3, 32, 32) and targets.shape == (32,)
    assert bundle.num_classes == 10 and bundle.class_names == [str(d) for d in range(10)]
    assert bundle.mixup_fn is None


@requires_dataset("cifar10")
def test_cifar10_zip_mode_as_shipped():
    bundle = build_loader(tiny_config("DATA.DATASET", "'imagenet'", "DATA.DATA_PATH", CIFAR10, "DATA.ZIP_MODE", "True",
                              "DATA.CACHE_MODE", "'no'"), CPU)
    assert (len(bundle.dataset_train), len(bundle.dataset_val)) == (50_000, 10_000)
    assert bundle.class_names == CIFAR_CLASSES and bundle.num_classes == 10
    images, targets = next(iter(bundle.loader_val))
    assert images.shape == (8, 3, 32, 32)
    with zipfile.ZipFile(os.path.join(CIFAR10, "val.zip")) as archive:
        first = archive.namelist()[0]
    assert bundle.dataset_val.samples[0][1] == CIFAR_CLASSES.index(first.split("/")[0])
    assert targets.tolist() == [bundle.dataset_val.samples[i][1] for i in range(8)]


@requires_dataset("cifar10")
def test_cifar10_image_folder_after_extracting_a_subset(tmp_path):
    with zipfile.ZipFile(os.path.join(CIFAR10, "val.zip")) as archive:
        names = [n for n in archive.namelist() if n.endswith(".jpg")]
        for split in ("train", "val"):
            for name in [n for n in names if int(n.split("/")[1][:4]) < 6]:
                archive.extract(name, tmp_path / split)
    bundle = build_loader(tiny_config("DATA.DATASET", "'imagenet'", "DATA.DATA_PATH", str(tmp_path)), CPU)
    assert bundle.class_names == CIFAR_CLASSES and len(bundle.dataset_val) == 60
    images, targets = next(iter(bundle.loader_val))
    assert images.shape == (8, 3, 32, 32) and targets.tolist() == [0] * 6 + [1] * 2
    assert map_lines(str(tmp_path / "val"))[6] == "automobile/0000.jpg\t1"


def test_missing_data_path_names_it(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'} does not exist"):
        build_loader(tiny_config("DATA.DATASET", "'imagenet'", "DATA.DATA_PATH", str(tmp_path / "nope")), CPU)


def test_class_count_mismatch_is_an_error():
    with pytest.raises(DataError, match="MODEL.NUM_CLASSES is 7 but the data has 10 classes"):
        build_loader(tiny_config("DATA.DATASET", "'digits'", "MODEL.NUM_CLASSES", "7"), CPU)


class PageFaultProbe(torch.utils.data.Dataset):
    """One item: the fewest page faults of a 64 MiB tensor allocated after others were freed, in the loading
    process."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _index: int) -> int:
        faults = []
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.ones(64 << 18).sum()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return min(faults[2:])


def test_loader_workers_keep_freed_memory_whatever_their_start_method():
    """A spawned worker starts with glibc's default (a tensor above 32 MiB is mapped afresh every time: about 16,000
    page faults for 64 MiB); the training loader's worker init keeps freed memory, so later tensors reuse pages."""
    faults = {}
    for init in (None, init_loader_worker):
        loader = torch.utils.data.DataLoader(PageFaultProbe(), batch_size=None, num_workers=1, worker_init_fn=init,
                                             multiprocessing_context="spawn")
        faults[init] = int(next(iter(loader)))
    if faults[None] < 10_000:
        pytest.skip(f"this C library reuses freed memory by default ({faults[None]} page faults)")
    assert faults[init_loader_worker] < 100, faults


def test_more_workers_than_cpus_start_one_per_cpu_with_a_warning(monkeypatch, caplog):
    """DATA.NUM_WORKERS 10000 used to fork 10000 processes (and torch warned in two multi-line blocks)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    bundle = build_loader(load_config("configs/demo_digits.yaml", ("DATA.NUM_WORKERS", "10000")), CPU)
    assert bundle.loader_train.num_workers == 1 and bundle.loader_val.num_workers == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["DATA.NUM_WORKERS 10000 is more than the CPUs this process may use (1); starting 1 loader "
                        "workers"]
    images, targets = next(iter(bundle.loader_train))
    assert images.shape == (32, 3, 32, 32)


def rank_of(rank: int, world_size: int) -> Runtime:
    return Runtime(torch.device("cpu"), rank=rank, world_size=world_size)


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
