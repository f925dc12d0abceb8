"""The output folder of a training run: its file names, one run at a time, shared by every node, its records kept
true (auto-resume, pruning), and never replaced by a tool's output.

A run holds an exclusive lock on its output folder for its lifetime; the kernel drops it when
the process dies, so a killed run never leaves a stale lock behind. A rerun compares the
settings stored in the checkpoint with its own before anything in the folder changes.
"""

import fcntl
import fnmatch
import glob
import logging
import os
import re
import uuid
from typing import Any, Iterable, Optional

import yaml
from yacs.config import CfgNode

from checkpoints.files import is_training_checkpoint, load_checkpoint_file
from utils import CheckpointError, ConfigError, UserError, output_folder_error, require_folder_of, save_text

# What a run keeps in its output folder (the one with its config.yaml) beside its checkpoints: its records, which a
# tool's output never replaces.
RUN_RECORDS = ("config.yaml", "config_until_epoch_*.yaml", "metrics.jsonl", "log_rank*.txt", "*_per_class.json",
               "*_confusion.png")


def _is_run_record(path: str) -> bool:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.isfile(os.path.join(folder, "config.yaml")) and any(fnmatch.fnmatch(name, p) for p in RUN_RECORDS)


def require_output(path: str, inputs: Iterable[Optional[str]] = ()) -> None:
    """A tool's output check: `path` can be written (require_folder_of), and is none of the command's `inputs`, a
    training checkpoint or a run's record (RUN_RECORDS), which a tool's result must never replace."""
    require_folder_of(path)
    if not os.path.exists(path):
        return
    if _is_run_record(path):
        raise UserError(f"cannot write {path}: it is a record of the training run in that folder, which this would "
                        "replace; write the result under another name")
    for given in inputs:
        if given and os.path.exists(given) and os.path.samefile(path, given):
            raise UserError(f"cannot write {path}: it is an input of this command ({given}); write the result "
                            "under another name")
    if is_training_checkpoint(path):
        raise UserError(f"cannot write {path}: it is a training checkpoint (it holds optimizer state), which this "
                        "would replace; write the result under another name")


# The run folder's checkpoint names, written and parsed here alone.
BEST_CHECKPOINT = "best.pth"
_CHECKPOINT_NAME = re.compile(r"ckpt_epoch_(\d+)(?:_step_(\d+))?\.pth$")


def checkpoint_name(epoch: int, batches: int) -> str:
    """The file name of the checkpoint that resumes at (epoch to run, batches of it done): `ckpt_epoch_E.pth` ends
    epoch E, `ckpt_epoch_E_step_B.pth` was written after B batches of epoch E."""
    return f"ckpt_epoch_{epoch}_step_{batches}.pth" if batches else f"ckpt_epoch_{epoch - 1}.pth"


def training_position(path: str) -> tuple[int, int]:
    """Where a checkpoint leaves training, as (epoch to run, batches of it done), from its name (checkpoint_name);
    (-1, -1) for another name."""
    match = _CHECKPOINT_NAME.search(path)
    if not match:
        return (-1, -1)
    epoch, batches = int(match.group(1)), match.group(2)
    return (epoch, int(batches)) if batches is not None else (epoch + 1, 0)


def finetune_tag(source_tag: str) -> str:
    """The tag of a fine-tune from a run tagged `source_tag`: `finetune`, and from a fine-tune the next number
    (`finetune_2`, `finetune_3`, ...), so a fine-tune never lands in the folder of the run it starts from."""
    match = re.fullmatch(r"finetune(?:_(\d+))?", source_tag)
    return f"finetune_{int(match.group(1) or 1) + 1}" if match else "finetune"


def tag_beside_weights(model_folder: str, tag: str, pretrained: str, tag_is_ours: bool) -> str:
    """The tag of a training run in `model_folder`: `tag`, unless the --pretrained file lies in that tag's folder,
    where training would resume the run that wrote it: then the next fine-tune tag where the tag was this tool's
    choice (`tag_is_ours`), else one ConfigError asking for another --tag."""
    folder = os.path.join(model_folder, tag)
    if not (pretrained and os.path.isfile(pretrained)
            and os.path.dirname(os.path.realpath(pretrained)) == os.path.realpath(folder)):
        return tag
    if not tag_is_ours:
        raise ConfigError(f"--pretrained {pretrained} lies in {folder}, the output folder of this run, which would "
                          "resume that run instead of starting from its weights; pass --tag NAME to fine-tune in a "
                          "folder of its own")
    return finetune_tag(tag)


def training_checkpoints(output_dir: str) -> list[str]:
    """The training checkpoints in `output_dir`, newest position first."""
    return sorted(glob.glob(os.path.join(output_dir, "ckpt_epoch_*.pth")), key=training_position, reverse=True)


def find_resume_checkpoint(output_dir: str, logger: logging.Logger) -> Optional[str]:
    """The newest readable training checkpoint in `output_dir`, or None; unreadable ones are skipped with a warning."""
    newest = _newest_readable(output_dir, logger)
    return newest[0] if newest else None


def _newest_readable(output_dir: str, logger: logging.Logger) -> Optional[tuple[str, dict]]:
    """(path, payload) of the newest readable training checkpoint in `output_dir`; unreadable ones are skipped with
    a warning."""
    for path in training_checkpoints(output_dir):
        try:
            payload = load_checkpoint_file(path)
        except CheckpointError as err:
            logger.warning(f"auto-resume skips {path}: {err}")
            continue
        if {"model", "optimizer", "epoch"} <= payload.keys():
            return path, payload
        logger.warning(f"auto-resume skips {path}: it is not a training checkpoint")
    return None


def prune_checkpoints(output_dir: str, keep: int, protected: tuple[str, ...], logger: logging.Logger) -> None:
    """Delete all but the `keep` newest training checkpoints (0 keeps all), never one in `protected`."""
    if keep <= 0:
        return
    protected_real = {os.path.realpath(p) for p in protected if p}
    for path in training_checkpoints(output_dir)[keep:]:
        if os.path.realpath(path) not in protected_real:
            os.remove(path)
            logger.info(f"removed old checkpoint {path}")


# Keys that change how a run is executed or recorded, not what it trains; a rerun may change them freely.
_FREE_KEYS = {
    "OUTPUT", "TAG", "PRINT_FREQ", "SAVE_FREQ", "TRAIN.SAVE_STEPS", "TRAIN.KEEP_CHECKPOINTS", "TRAIN.AUTO_RESUME",
    "TRAIN.MAX_NONFINITE", "TRAIN.USE_CHECKPOINT", "MODEL.RESUME", "MODEL.ATTN_IMPL",
    "DATA.NUM_WORKERS", "DATA.PIN_MEMORY", "DATA.DECODE_ERRORS", "DEVICE", "AMP_ENABLE", "AMP_DTYPE", "ENABLE_AMP",
    "AMP_OPT_LEVEL", "COMPILE", "EVAL_MODE", "THROUGHPUT_MODE", "LOCAL_RANK", "FUSED_WINDOW_PROCESS",
    "FUSED_LAYERNORM", "TEST.CROP", "TEST.SEQUENTIAL", "TEST.SHUFFLE", "TEST.COMPILE", "ALLOW_TF32",
    "DATA.TRANSFORM_BACKEND", "TRAIN.ONEDNN_LINEAR",
}
# What a new run starts from (MODEL.PRETRAINED) is a training setting: a rerun from other weights is another run. An
# explicit --resume takes its weights from the checkpoint, so there the pretrained weights are not read at all.
_FREE_WHEN_RESUMED = {"MODEL.PRETRAINED"}
# Keys that decide which images make up each step: a checkpoint written inside an epoch resumes only with them equal.
ARRANGEMENT_KEYS = ("DATA.BATCH_SIZE", "TRAIN.ACCUMULATION_STEPS", "DATA.ZIP_MODE", "DATA.CACHE_MODE", "SEED")


def _flatten(node: Any, prefix: str = "") -> dict:
    if isinstance(node, dict):
        items: dict = {}
        for key, value in node.items():
            items.update(_flatten(value, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: list(node) if isinstance(node, (list, tuple)) else node}


def _stored_settings(text: object) -> dict:
    """A checkpoint's stored config as flat `{KEY.NAME: value}`; text that is no config gives none."""
    try:
        return _flatten(yaml.safe_load(text) or {}) if isinstance(text, str) else {}
    except (yaml.YAMLError, RecursionError):
        return {}


def settings_differences(stored_text: str, config: CfgNode, stored_world: int, world_size: int) -> dict:
    """`{key: (stored, current)}` for the training settings that differ; `processes` stands for the world size."""
    stored = _stored_settings(stored_text)
    current = _flatten(config)
    free = _FREE_KEYS | (_FREE_WHEN_RESUMED if config.MODEL.RESUME else set())
    differences = {key: (stored.get(key), value) for key, value in current.items()
                   if key not in free and key in stored and stored[key] != value}
    if stored_world and stored_world != world_size:
        differences["processes"] = (stored_world, world_size)
    return differences


def describe_differences(differences: dict, limit: int = 4) -> str:
    shown = [f"{key} {old} -> {new}" for key, (old, new) in list(differences.items())[:limit]]
    more = len(differences) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _holder_pid(path: str) -> Optional[int]:
    """The process holding a flock on `path`, from /proc/locks (None where that cannot be read)."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].split(":")[-1] == str(inode):
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None


class RunLock:
    """An exclusive lock on the run folder itself (no file is written), held until `release` or the process dies."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise output_folder_error(self.folder, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _holder_pid(self.folder)
            holder = f"process {pid}" if pid else "another process"
            raise ConfigError(f"output folder {self.folder} is in use by a running training or evaluation "
                              f"({holder}); wait for it to end, or pass another --tag or --output") from None
        except OSError:
            pass  # a file system without flock on folders: concurrent runs go undetected, as in the reference code
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def new_folder_token(folder: str) -> str:
    """Write a token file that every rank must see in its output folder; returns its name."""
    name = f".shared-check-{uuid.uuid4().hex}"
    with open(os.path.join(folder, name), "w", encoding="ascii"):
        pass
    return name


def check_folder_token(folder: str, name: str) -> None:
    if not os.path.exists(os.path.join(folder, name)):
        raise ConfigError(f"output folder {folder} is not the one rank 0 writes to: checkpoints are written once, "
                          "by rank 0, so every node must see the same folder; put --output on a file system shared "
                          "by all nodes")


def remove_folder_token(folder: str, name: str) -> None:
    try:
        os.remove(os.path.join(folder, name))
    except FileNotFoundError:
        pass


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the `*.tmp.<pid>` files that a run killed while saving left behind; returns their paths."""
    stale = glob.glob(os.path.join(folder, "*.tmp.*"))
    for path in stale:
        os.remove(path)
    return stale


def write_config(folder: str, config: CfgNode, resumed_epoch: int, differences: dict) -> None:
    """`config.yaml` as the config training continues with; a config it replaces is kept beside it."""
    path = os.path.join(folder, "config.yaml")
    if differences and os.path.exists(path):
        os.replace(path, os.path.join(folder, f"config_until_epoch_{resumed_epoch}.yaml"))
    save_text(config.dump(), path)


def continued_checkpoint(config: CfgNode, logger: logging.Logger) -> str:
    """The checkpoint an explicit --resume CKPT starts from: CKPT, or the newest checkpoint of the output folder where
    a run started with the same --resume CKPT wrote it. A preempted or requeued job reruns its command as it was, so
    that command must carry on from where the run stopped, not be refused for the checkpoints the run wrote."""
    given, written = config.MODEL.RESUME, training_checkpoints(config.OUTPUT)
    if not written or (os.path.exists(given) and os.path.realpath(written[0]) == os.path.realpath(given)):
        return given
    newest = _newest_readable(config.OUTPUT, logger)
    resumed = _stored_settings(newest[1].get("config")).get("MODEL.RESUME") if newest else None
    if not (isinstance(resumed, str) and resumed and os.path.realpath(resumed) == os.path.realpath(given)):
        return given
    logger.info(f"--resume {given}: {config.OUTPUT} holds later checkpoints of the run it started; continuing from "
                f"the newest, {newest[0]}")
    return newest[0]


def check_nothing_overwritten(config: CfgNode, start_path: str, position: tuple[int, int]) -> None:
    """Refuse to train from `position` behind a checkpoint the output folder holds: training would overwrite it (and
    prune its own new ones first). Auto-resume starts at the newest readable one; what it passed by was unreadable."""
    if not config.MODEL.RESUME and config.TRAIN.AUTO_RESUME:
        return
    start = os.path.realpath(start_path) if start_path else ""
    ahead = [p for p in training_checkpoints(config.OUTPUT) if os.path.realpath(p) != start
             and (not start or training_position(p) > position)]
    if not ahead:
        return
    shown = ", ".join(os.path.basename(p) for p in ahead[:3]) + (" ..." if len(ahead) > 3 else "")
    if not start:
        raise UserError(f"output folder {config.OUTPUT} holds checkpoints of a run ({shown}) and TRAIN.AUTO_RESUME is "
                        f"off, so a new run would overwrite them; continue it with --resume {ahead[0]}, or start the "
                        "new run under another --tag")
    raise UserError(f"output folder {config.OUTPUT} holds checkpoints from later in training than {start_path} "
                    f"({shown}), which continuing from it would overwrite; resume from {ahead[0]}, or continue this "
                    "checkpoint in a new folder with another --tag")


def check_resumable(config: CfgNode, changed: dict, point: Any, logger: logging.Logger) -> None:
    """Refuse a silent change of settings (`changed`, from settings_differences); continue an explicit --resume of
    `point` (a checkpoint.ResumePoint) under the new ones."""
    if not changed:
        return
    listed = describe_differences(changed)
    if not config.MODEL.RESUME:
        raise UserError(f"output folder {config.OUTPUT} holds a run trained with other settings ({listed}); to "
                        f"continue it under the new settings pass --resume {point.path}, or start a new run with "
                        "another --tag")
    moved = {k: v for k, v in changed.items() if k in ARRANGEMENT_KEYS or k == "processes"}
    if point.batches and moved:
        raise UserError(f"checkpoint {point.path} was written inside epoch {point.epoch}, and "
                        f"{describe_differences(moved)} change which images its remaining steps hold; resume from "
                        f"{checkpoint_name(point.epoch, 0)}, the end of the previous epoch, or keep those settings")
    logger.warning(f"continuing {point.path} under changed settings ({describe_differences(changed, 99)}); the "
                   f"schedule is rebuilt for them from epoch {point.epoch}, step {point.batches}")
