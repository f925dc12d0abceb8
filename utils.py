"""User errors, atomic checkpoint I/O, auto-resume and seeding.

`main()` catches `UserError`, prints `error: <message>` on stderr and exits with code 2;
everything else is a bug and keeps its traceback.
"""

import contextlib
import errno
import fnmatch
import glob
import logging
import os
import pickle
import random
import re
import shutil
import signal
import sys
import warnings
import zipfile
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

# The signals that stop a run for good: a launcher's or scheduler's SIGTERM, Ctrl-C, a closed terminal or SSH
# session. Training saves a checkpoint on each; loader workers ignore them and are ended by training.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))

# OS errors of a write that the user fixes (room on the disk, a read-only or over-quota file system).
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


class UserError(Exception):
    """A mistake in the user's flags, config, data or files; the message names the thing and the fix."""


class ConfigError(UserError):
    """A config file, key or value that cannot be used."""


class DataError(UserError):
    """A dataset path, layout, map file or image that cannot be read."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


def announce_user_error(err: UserError, show: bool) -> None:
    """Report an error every rank of a launched job has met, now, and make the way out exit code 2.

    The launcher (torchrun) sends SIGTERM to the ranks still running once one has exited; a rank
    that is already on its way out after this error then exits with 2 instead of dying by signal.
    """
    report_user_error(err, show)
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(2))


def counted(count: int, noun: str) -> str:
    """`count` with `noun` in the singular or plural: "1 epoch", "3 epochs"."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def tell(line: str) -> None:
    """Print `line` on stderr; a stderr that cannot take it (a full disk, a closed pipe) must not turn the exit
    code of what is being told into a traceback's."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def report_user_error(err: UserError, show: bool = True) -> int:
    """Print `err` as one `error: ...` line on stderr (when `show`) and return the exit code for user mistakes, 2.

    A DataLoader worker re-raises errors with its traceback in the message; only the last line is kept.
    Under several processes only rank 0 shows the line, so the user reads it once.
    """
    lines = str(err).strip().splitlines()
    if len(lines) > 1 and "Traceback" in str(err):
        message = lines[-1].split(": ", 1)[-1]
    else:
        message = " ".join(lines)
    if not getattr(err, "reported", False):
        if show:
            tell(f"error: {message}")
        write_to_log_files(f"error: {message}")
    err.reported = True
    return 2


def write_to_log_files(line: str) -> None:
    """Append `line` to this process's run logs (log_rank*.txt), so the run folder tells how the run ended."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("swin.rank") and isinstance(logger, logging.Logger):
            record = logger.makeRecord(name, logging.ERROR, __file__, 0, line, None, None)
            for handler in logger.handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.handle(record)


def discard_stdout() -> None:
    """Point standard output at the null device, dropping what is buffered: for when its reader has gone or its
    disk is full, so neither later prints nor Python's flush at exit fail again."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):  # a stream without a descriptor (captured in tests) has nothing to keep
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


# Free space below which a failed write is taken for a full disk.
_NEARLY_FULL_BYTES = 4 * 2**20


def kind_problem(path: str, kind: str) -> Optional[str]:
    """Why `path` is not an existing `kind` ("file" or "folder"), worded to follow its name; None when it is."""
    if os.path.isfile(path) if kind == "file" else os.path.isdir(path):
        return None
    if os.path.isdir(path):
        return "is a folder, not a file"
    if os.path.exists(path):
        return "is a file, not a folder" if kind == "folder" else "is not a regular file"
    return "does not exist"


def output_folder_error(folder: str, err: OSError) -> ConfigError:
    """The one line for a run's output folder that cannot be made, opened or written in (a file in its path, a
    name too long, no permission), wherever that shows first."""
    where = f": {err.filename}" if err.filename else ""
    return ConfigError(f"output folder {folder} cannot be written ({err.strerror}{where}); pass --output a folder "
                       "you can write to")


def require_folder_of(path: str) -> None:
    """A one-line UserError, before any work is done, when a file cannot be written at `path`: it is a folder or
    something else that is not a regular file (a device, FIFO or socket: replacing it would remove the node, and
    reading it to check what it holds would block), or its folder is missing or not writable (read-only, no
    permission)."""
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder; give a file name inside it")
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"cannot write {path}: it is not a regular file (a device, FIFO or socket); give the path "
                        "of a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: folder {folder} does not exist; create it or pick another path")
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: folder {folder} is read-only or not yours to write; pick another path")


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
    if _is_training_checkpoint(path):
        raise UserError(f"cannot write {path}: it is a training checkpoint (it holds optimizer state), which this "
                        "would replace; write the result under another name")


def _is_training_checkpoint(path: str) -> bool:
    """A torch.save archive with optimizer state; one that pickles more than the weights-only loader reads (a
    reference run's config) counts as one too."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()) or _export_kind(path):
                return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return True
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError, AttributeError, TypeError, KeyError):
        return False  # damaged: whatever it was, it no longer holds a run
    return isinstance(payload, dict) and "optimizer" in payload


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Run `write(tmp_path)`, then move the file over `path`: a crash leaves the old file or none, never half a file."""
    require_folder_of(path)
    tmp_path = f"{path}.tmp.{os.getpid()}"
    try:
        with out_of_space_as_user_error(path):
            write(tmp_path)
            os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


@contextlib.contextmanager
def out_of_space_as_user_error(path: str) -> Iterator[None]:
    """Turn a full disk or quota met while writing `path` into a one-line UserError; other errors pass."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not _is_out_of_space(err, os.path.dirname(path) or "."):
            raise
        raise UserError(f"no space left on the device of {path}; free some space or write to a folder on another "
                        "disk, then rerun (what was saved before is kept, and training resumes from it)") from None


def _is_out_of_space(err: BaseException, folder: str) -> bool:
    """True for a full disk or quota, also when torch.save reports it as a RuntimeError about file positions:
    then the half-written temporary file has taken the last free bytes."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if (isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM)) or (
            os.strerror(errno.EROFS) in str(err)):  # torch.save's RuntimeError carries the OS's words
        return False
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def save_checkpoint(payload: dict, path: str) -> None:
    """Write `payload` to `path` atomically, so auto-resume never picks a truncated checkpoint."""
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


def save_text(text: str, path: str) -> None:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)


# What the reference code's checkpoints pickle beyond tensors and plain values: its config, numpy scalars.
_REFERENCE_GLOBALS = {"yacs.config.CfgNode", "argparse.Namespace", "numpy.dtype", "numpy.ndarray",
                      *(f"numpy.{core}.multiarray.{name}" for core in ("core", "_core")
                        for name in ("_reconstruct", "scalar"))}


def _export_kind(path: str) -> str:
    """What deployment format `path` holds ('' for none): ONNX by its name, TorchScript and torch.export programs
    by the members of their zip archives."""
    if path.lower().endswith(".onnx"):
        return "an ONNX model"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return ""
    if any(name.endswith("/constants.pkl") for name in members):
        return "a TorchScript program"
    if any(name.endswith("/models/model.json") for name in members):
        return "a torch.export program"
    return ""


def _load_pickled(path: str) -> object:
    """torch.load with the weights-only unpickler, or the full one where the pickle names nothing but what the
    reference's checkpoints pickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err):
            raise
    foreign = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - _REFERENCE_GLOBALS)
    if foreign:
        raise CheckpointError(f"checkpoint {path} cannot be read: it pickles code from elsewhere "
                              f"({', '.join(foreign)[:120]}), which is never run here; save its weights as "
                              "{'model': state_dict} where that code lives")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint_file(path: str) -> dict:
    """Read a checkpoint as a dict of tensors and plain values, without running pickled code.

    Reference checkpoints pickle their yacs config (and numpy scalars), which torch's weights-only loader
    refuses: a file whose pickle names nothing but those and what that loader allows is read in full; one
    naming any other code (which unpickling would run) is refused.
    """
    if problem := kind_problem(path, "file"):
        raise CheckpointError(f"checkpoint {path} {problem}; pass the path of a checkpoint file (.pth)")
    if exported := _export_kind(path):
        raise CheckpointError(f"checkpoint {path} is {exported} (tools.export writes these for deployment), a "
                              "compiled model, not a checkpoint; pass the checkpoint it was exported from")
    try:
        with warnings.catch_warnings():  # torch's notes on what it checks while loading; our errors say what matters
            warnings.simplefilter("ignore", UserWarning)
            payload = _load_pickled(path)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError,
            ImportError, TypeError, IndexError, KeyError) as err:  # a damaged file, or one pickling foreign code
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({reason[:120]}); it is truncated or not a PyTorch checkpoint"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict of weights")
    return payload


def training_position(path: str) -> tuple[int, int]:
    """Where a checkpoint leaves training, as (epoch to run, batches of it done), from its file name.

    `ckpt_epoch_E.pth` ends epoch E; `ckpt_epoch_E_step_B.pth` was written after B batches of epoch E.
    """
    match = re.search(r"ckpt_epoch_(\d+)(?:_step_(\d+))?\.pth$", path)
    if not match:
        return (-1, -1)
    epoch, batches = int(match.group(1)), match.group(2)
    return (epoch, int(batches)) if batches is not None else (epoch + 1, 0)


def training_checkpoints(output_dir: str) -> list[str]:
    """The training checkpoints in `output_dir`, newest position first."""
    return sorted(glob.glob(os.path.join(output_dir, "ckpt_epoch_*.pth")), key=training_position, reverse=True)


def find_resume_checkpoint(output_dir: str, logger: logging.Logger) -> Optional[str]:
    """The newest readable training checkpoint in `output_dir`, or None; unreadable ones are skipped with a warning."""
    candidates = training_checkpoints(output_dir)
    for path in candidates:
        try:
            payload = load_checkpoint_file(path)
        except CheckpointError as err:
            logger.warning(f"auto-resume skips {path}: {err}")
            continue
        if {"model", "optimizer", "epoch"} <= payload.keys():
            return path
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, so runs with the same seed draw the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
