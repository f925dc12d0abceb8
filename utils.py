"""What every part shares: the user-error types and how a mistake is told (one `error:` line), the signals that
stop a run, and writing a user's file so that a failure leaves the old file or none, never half of one.

`main()` catches `UserError`, prints `error: <message>` on stderr and exits with code 2;
everything else is a bug and keeps its traceback.
"""

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
from typing import Callable, Iterator, Optional

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


def save_text(text: str, path: str) -> None:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)
