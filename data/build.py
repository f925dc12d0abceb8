"""Build datasets, samplers, loaders and the mixup function from a config."""

import atexit
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.data.dataloader import default_collate
from yacs.config import CfgNode

from data.datasets import DigitsDataset, FakeDataset, ImageFilesDataset, ImageFolderDataset, ZipMapDataset
from data.samplers import ExactShardSampler, ResumableSampler, ShardRandomSampler
from data.seeding import SeededSamples
from data.simmim import MaskedImages, build_mask_generator, build_simmim_transform
from data.transforms import build_transform
from runtime import Runtime, keep_freed_memory
from utils import STOP_SIGNALS, DataError, kind_problem

_DEFAULT_NUM_CLASSES = 1000
# Sizes of the synthetic dataset (DATA.DATASET fake): enough batches for a throughput or smoke run.
_FAKE_TRAIN_SIZE = 1280
_FAKE_VAL_SIZE = 256


@dataclass
class LoaderBundle:
    """What training and evaluation need from the data side."""

    dataset_train: Dataset
    dataset_val: Optional[Dataset]  # None in SimMIM pre-training
    loader_train: DataLoader
    loader_val: Optional[DataLoader]
    mixup_fn: Optional[Callable]
    num_classes: int
    class_names: list[str]


class SkipUndecodable(Dataset):
    """Yields None for images that fail to decode, so the collate function can drop them (DATA.DECODE_ERRORS skip)."""

    def __init__(self, dataset: Dataset, logger: logging.Logger) -> None:
        self.dataset = dataset
        self.logger = logger

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DataError as err:
            self.logger.warning(f"skipped: {err}")
            return None


def init_loader_worker(_worker_id: int) -> None:
    """Loader workers ignore the stop signals (utils.STOP_SIGNALS): launchers (torchrun, SLURM, a terminal's Ctrl-C
    or hang-up) signal every process of the job, and the training process, which saves a checkpoint first, ends its
    workers itself. They
    keep freed memory for reuse (the decoded image and its crops are large tensors that glibc would map afresh for
    every image): the torch backend's images per CPU-second rose 5-15% with it (benchmarks/bench_loader.py)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    keep_freed_memory()


def _end_leftover_workers() -> None:
    """At exit, kill the loader workers still running. They ignore SIGTERM, so multiprocessing's own exit-time
    terminate() of daemonic children would wait for them forever (a run that ended on an error leaves them).
    The loaders' SIGCHLD handler goes first: it would report each killed worker as a crash."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


def _end_workers_at_exit() -> None:
    atexit.unregister(_end_leftover_workers)
    atexit.register(_end_leftover_workers)  # after multiprocessing's own exit hook, so it runs before it


def collate_skipping_none(batch: list) -> Any:
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return None
    return default_collate(kept)


def _check_data_path(config: CfgNode, for_eval: bool = False) -> str:
    """DATA.DATA_PATH, once it is a folder; outside --eval (`for_eval`), a zip layout asks for --zip."""
    root = config.DATA.DATA_PATH
    if not root:
        raise DataError(f"DATA.DATASET {config.DATA.DATASET} needs a dataset; pass --data-path DIR (or use "
                        "DATA.DATASET digits)")
    if problem := kind_problem(root, "folder"):
        raise DataError(f"data path {root} {problem}; pass the folder that holds train/ and val/")
    zip_layout = not os.path.exists(os.path.join(root, "train")) and os.path.isfile(os.path.join(root, "train.zip"))
    if zip_layout and not config.DATA.ZIP_MODE and not for_eval:
        raise DataError(f"data path {root} holds train.zip and no train/ folder: it is the reference's zip layout; "
                        "add --zip")
    return root


def _eval_reads_zip(config: CfgNode, root: str) -> bool:
    """Whether --eval reads val.zip: the data is the user's, so the --data-path layout decides (a checkpoint's
    config carries the DATA.ZIP_MODE of the data it was trained on). DATA.ZIP_MODE only picks where it holds both."""
    has_zip, has_folder = os.path.isfile(os.path.join(root, "val.zip")), os.path.isdir(os.path.join(root, "val"))
    return has_zip and (config.DATA.ZIP_MODE or not has_folder)


def _eval_folder(root: str) -> str:
    """--eval's class folders: DATA_PATH/val, or DATA_PATH itself when it holds the class folders."""
    folder = os.path.join(root, "val")
    if os.path.isdir(folder):
        return folder
    if any(entry.is_dir() for entry in os.scandir(root)):
        return root
    raise DataError(f"data path {root} holds no val/ folder, no val.zip and no class folders; pass the folder that "
                    "holds val/<class>/ images (or val.zip and val_map.txt), or the class folders' parent")


def _build_val_dataset(config: CfgNode, rt: Runtime, for_eval: bool = False) -> Dataset:
    """The validation set. A zip's images are cached by DATA.CACHE_MODE, with part only by the rank whose
    ExactShardSampler shard reads them (rank::world, the part cache's own rule): no rank holds all of val.zip.

    With `for_eval` (--eval), the --data-path layout picks val.zip or class folders (_eval_reads_zip).
    """
    kind, val_tf = config.DATA.DATASET, build_transform(False, config)
    if kind == "digits":
        return DigitsDataset(False, val_tf)
    if kind == "fake":
        return FakeDataset(_FAKE_VAL_SIZE, config.DATA.IMG_SIZE, config.MODEL.NUM_CLASSES)
    root = _check_data_path(config, for_eval)
    if _eval_reads_zip(config, root) if for_eval else config.DATA.ZIP_MODE:
        return ZipMapDataset(os.path.join(root, "val.zip"), os.path.join(root, "val_map.txt"), val_tf,
                             config.DATA.CACHE_MODE, rt.rank, rt.world_size)
    return ImageFolderDataset(_eval_folder(root) if for_eval else os.path.join(root, "val"), val_tf)


def _build_datasets(config: CfgNode, rt: Runtime) -> tuple[Dataset, Dataset]:
    kind, train_tf = config.DATA.DATASET, build_transform(True, config)
    if kind == "digits":
        return DigitsDataset(True, train_tf), _build_val_dataset(config, rt)
    if kind == "fake":
        train = FakeDataset(_FAKE_TRAIN_SIZE, config.DATA.IMG_SIZE, config.MODEL.NUM_CLASSES)
        return train, _build_val_dataset(config, rt)
    root = _check_data_path(config)
    if config.DATA.ZIP_MODE:
        train = ZipMapDataset(os.path.join(root, "train.zip"), os.path.join(root, "train_map.txt"), train_tf,
                              config.DATA.CACHE_MODE, rt.rank, rt.world_size)
    else:
        train = ImageFolderDataset(os.path.join(root, "train"), train_tf)
    return train, _build_val_dataset(config, rt)


def _check_classes(config: CfgNode, train: Dataset, val: Dataset) -> int:
    """The class count, once training and validation agree on the classes and the config on their number."""
    num_classes = len(train.classes)
    if isinstance(train, ImageFolderDataset) and list(val.classes) != list(train.classes):
        only_val = sorted(set(val.classes) - set(train.classes))
        only_train = sorted(set(train.classes) - set(val.classes))
        detail = (f"{only_val[0]!r} is only in validation" if only_val else
                  f"{only_train[0]!r} is only in training" if only_train else "the same names in another order")
        raise DataError(f"validation class folders differ from the training ones ({detail}); give both splits the "
                        "same class folders")
    out_of_range = [(path, label) for path, label in getattr(val, "samples", ()) if label >= num_classes]
    if out_of_range:
        path, label = out_of_range[0]
        raise DataError(f"validation map gives {path} label {label}, but the training map has labels 0-"
                        f"{num_classes - 1}; use the training map's labels")
    wanted = config.MODEL.NUM_CLASSES
    if wanted == 0 and not config.THROUGHPUT_MODE:
        raise DataError(f"MODEL.NUM_CLASSES is 0, a model without a classifier, which cannot be trained or evaluated; "
                        f"drop --num-classes (the data has {num_classes} classes)")
    if wanted not in (_DEFAULT_NUM_CLASSES, num_classes) and config.DATA.DATASET != "fake":
        raise DataError(f"MODEL.NUM_CLASSES is {wanted} but the data has {num_classes} classes; "
                        f"drop --num-classes or set it to {num_classes}")
    return num_classes


def build_mixup(config: CfgNode, num_classes: int) -> Optional[Mixup]:
    """timm's Mixup/CutMix with label smoothing, or None when both alphas are 0."""
    aug = config.AUG
    if not (aug.MIXUP > 0 or aug.CUTMIX > 0 or aug.CUTMIX_MINMAX is not None):
        return None
    return Mixup(mixup_alpha=aug.MIXUP, cutmix_alpha=aug.CUTMIX, cutmix_minmax=aug.CUTMIX_MINMAX,
                 prob=aug.MIXUP_PROB, switch_prob=aug.MIXUP_SWITCH_PROB, mode=aug.MIXUP_MODE,
                 label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=num_classes)


def loader_workers(requested: int) -> int:
    """DATA.NUM_WORKERS, at most one per CPU this process may use: more only cost start-up time and memory
    (thousands would exhaust the machine's processes). Results do not depend on the count."""
    return min(requested, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _note_worker_cap(config: CfgNode, logger: logging.Logger) -> None:
    workers = loader_workers(config.DATA.NUM_WORKERS)
    if workers < config.DATA.NUM_WORKERS:
        logger.warning(f"DATA.NUM_WORKERS {config.DATA.NUM_WORKERS} is more than the CPUs this process may use "
                       f"({workers}); starting {workers} loader workers")


def _worker_options(config: CfgNode, rt: Runtime, persistent: bool) -> dict:
    """DataLoader worker settings: loader_workers workers started by init_loader_worker, pinned memory on CUDA."""
    workers = loader_workers(config.DATA.NUM_WORKERS)
    return dict(num_workers=workers, pin_memory=config.DATA.PIN_MEMORY and rt.device.type == "cuda",
                persistent_workers=persistent and workers > 0, worker_init_fn=init_loader_worker)


def _val_loader(val: Dataset, config: CfgNode, rt: Runtime, logger: logging.Logger, persistent: bool) -> DataLoader:
    """Validation batches in order, each image on exactly one rank; undecodable ones dropped with DECODE_ERRORS skip."""
    skip = config.DATA.DECODE_ERRORS == "skip"
    return DataLoader(SkipUndecodable(val, logger) if skip else val, batch_size=config.DATA.BATCH_SIZE,
                      sampler=ExactShardSampler(len(val), rt.rank, rt.world_size), drop_last=False,
                      collate_fn=collate_skipping_none if skip else default_collate,
                      **_worker_options(config, rt, persistent))


def build_eval_loader(config: CfgNode, rt: Runtime, class_names: Optional[list[str]] = None,
                      logger: Optional[logging.Logger] = None) -> tuple[DataLoader, int, list[str]]:
    """The validation loader alone, for --eval: DATA_PATH/val, or DATA_PATH itself when it is the class folders, or
    val.zip, as the --data-path layout holds them (whatever DATA.ZIP_MODE the checkpoint's config carries).

    With the `class_names` a checkpoint was trained on, a folder holding some of them is labelled as the
    model numbers them. Returns the loader, the class count and the class names.
    """
    val = _build_val_dataset(config, rt, for_eval=True)
    if class_names and isinstance(val, ImageFolderDataset):
        val.label_by(class_names)
    logger = logger or logging.getLogger(__name__)
    _note_worker_cap(config, logger)
    loader = _val_loader(val, config, rt, logger, persistent=False)
    if config.DATA.NUM_WORKERS > 0:
        _end_workers_at_exit()
    return loader, len(val.classes), list(val.classes)


def _train_loader(train: Dataset, config: CfgNode, rt: Runtime, logger: logging.Logger) -> DataLoader:
    """Random training batches of `train`, sharded over the ranks, resumable mid-epoch."""
    if config.DATA.ZIP_MODE and config.DATA.CACHE_MODE == "part":
        sampler = ShardRandomSampler(len(train), rt.rank, rt.world_size, config.SEED)
    else:
        sampler = DistributedSampler(train, rt.world_size, rt.rank, shuffle=True, seed=config.SEED)
    batches = len(train) // rt.world_size // config.DATA.BATCH_SIZE
    if batches < 1:
        raise DataError(f"the training set has {len(train)} images, fewer than one batch of "
                        f"{config.DATA.BATCH_SIZE} per process; lower --batch-size")
    if config.TRAIN.ACCUMULATION_STEPS > batches:
        raise DataError(f"TRAIN.ACCUMULATION_STEPS {config.TRAIN.ACCUMULATION_STEPS} is more than the {batches} "
                        "batches of an epoch per process; lower --accumulation-steps or --batch-size")
    skip = config.DATA.DECODE_ERRORS == "skip"
    _note_worker_cap(config, logger)
    # Each sample's augmentation is seeded from (SEED, epoch, index): the same whatever the number of
    # workers or processes, so a resumed run draws what an uninterrupted one would have drawn. The loader's
    # own generator keeps its start-up from drawing on the global RNG that Mixup and drop path use.
    samples = SeededSamples(SkipUndecodable(train, logger) if skip else train, config.SEED)
    loader = DataLoader(samples, batch_size=config.DATA.BATCH_SIZE, sampler=ResumableSampler(sampler), drop_last=True,
                        collate_fn=collate_skipping_none if skip else default_collate,
                        generator=torch.Generator().manual_seed(config.SEED + rt.rank),
                        **_worker_options(config, rt, persistent=True))
    if config.DATA.NUM_WORKERS > 0:
        _end_workers_at_exit()
    return loader


def _pretraining_images(config: CfgNode, rt: Runtime) -> Dataset:
    """The images of SimMIM pre-training in its view: DATA_PATH/train (or DATA_PATH itself when it has no train/,
    as the reference is given <imagenet>/train), with or without class folders; train.zip with --zip."""
    kind, view = config.DATA.DATASET, build_simmim_transform(config.DATA.IMG_SIZE)
    if kind == "digits":
        return DigitsDataset(True, view)
    if kind == "fake":
        return FakeDataset(_FAKE_TRAIN_SIZE, config.DATA.IMG_SIZE, 1)
    root = _check_data_path(config)
    if config.DATA.ZIP_MODE:
        return ZipMapDataset(os.path.join(root, "train.zip"), os.path.join(root, "train_map.txt"), view,
                             config.DATA.CACHE_MODE, rt.rank, rt.world_size)
    folder = os.path.join(root, "train")
    return ImageFilesDataset(folder if os.path.isdir(folder) else root, view)


def build_pretraining_loader(config: CfgNode, rt: Runtime, logger: logging.Logger) -> LoaderBundle:
    """SimMIM pre-training batches of (images, masks), labels unused; there is no validation set."""
    masks = build_mask_generator(config)
    images = MaskedImages(_pretraining_images(config, rt), masks)
    logger.info(f"SimMIM pre-training on {len(images):,} images: {masks.mask_count} of {masks.cells ** 2} mask "
                f"patches ({config.DATA.MASK_PATCH_SIZE}px) hidden per image")
    return LoaderBundle(images, None, _train_loader(images, config, rt, logger), None, None,
                        config.MODEL.NUM_CLASSES, [])


def build_loader(config: CfgNode, rt: Runtime, logger: Optional[logging.Logger] = None) -> LoaderBundle:
    """Datasets of DATA.DATASET, sharded over the ranks of `rt`: random batches for training, each
    validation image on exactly one rank (SimMIM pre-training: masked images, no validation)."""
    logger = logger or logging.getLogger(__name__)
    if config.MODEL.SIMMIM.PRETRAIN:
        return build_pretraining_loader(config, rt, logger)
    train, val = _build_datasets(config, rt)
    num_classes = _check_classes(config, train, val)
    loader_train = _train_loader(train, config, rt, logger)
    loader_val = _val_loader(val, config, rt, logger, persistent=True)
    return LoaderBundle(train, val, loader_train, loader_val, build_mixup(config, num_classes), num_classes,
                        list(train.classes))
