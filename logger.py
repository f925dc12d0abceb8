"""Rank-aware logging: coloured console on rank 0, a log file per rank, metrics as JSON lines and TensorBoard."""

import contextlib
import json
import logging
import math
import os
import sys
from typing import Optional

from termcolor import colored

from utils import discard_stdout, output_folder_error, save_text, tell


class _ColourFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = {logging.WARNING: "yellow", logging.ERROR: "red"}.get(record.levelno)
        return colored(text, colour) if colour else text


class _Console(logging.StreamHandler):
    """Rank 0's console: at its first OS error (a full disk behind it, a closed pipe) it stops, with one warning
    line on stderr instead of a traceback for every later record; the run and its log files go on."""

    stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.stopped:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)
            return
        self.stopped = True
        discard_stdout()  # the text still buffered would fail again at exit
        if not isinstance(err, BrokenPipeError):  # a reader that left (`| head`) needs no word
            tell(f"warning: logging to standard output stopped ({err.strerror}); the run goes on and log_rank0.txt "
                 "in its folder keeps the log")


class _LogFile(logging.FileHandler):
    """A run's log file that skips a record it cannot write (a full disk) without a traceback: the checkpoint
    save that follows meets the same disk and stops the run with one line, and a disk that frees up gets the
    next records."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def create_logger(output_dir: Optional[str], rank: int, name: str = "swin") -> logging.Logger:
    """A logger that prints on rank 0 (coloured on a terminal) and writes `log_rank{rank}.txt` in `output_dir`."""
    logger = logging.getLogger(f"{name}.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        with contextlib.suppress(OSError):  # a log on a disk that filled up cannot take its last lines
            handler.close()
    fmt = "[%(asctime)s %(name)s] %(message)s"
    if rank == 0:
        console = _Console(sys.stdout)
        formatter = _ColourFormatter if sys.stdout.isatty() else logging.Formatter
        console.setFormatter(formatter(fmt, datefmt="%H:%M:%S"))
        logger.addHandler(console)
    if output_dir:
        try:
            os.makedirs(output_dir, exist_ok=True)
            file_handler = _LogFile(os.path.join(output_dir, f"log_rank{rank}.txt"), mode="a")
        except OSError as err:
            raise output_folder_error(output_dir, err) from None
        file_handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def _finite_or_none(record: dict) -> dict:
    """`record` with NaN and infinities as None, so each line is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class MetricsWriter:
    """Per-epoch records to `metrics.jsonl` (strict JSON) and TensorBoard, on the main rank only.

    TensorBoard gets two runs: `tensorboard/train` (per logged step) and `tensorboard/epoch`.
    A resumed run purges what the interrupted one wrote past the checkpoint (`purge_step`,
    `purge_epoch`), so every step and epoch appears once.
    """

    def __init__(self, output_dir: str, enabled: bool, purge_step: int = 0, purge_epoch: int = 0) -> None:
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._writers: dict = {}
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            board = os.path.join(output_dir, "tensorboard")
            self._writers = {"train": SummaryWriter(os.path.join(board, "train"), purge_step=purge_step),
                             "epoch": SummaryWriter(os.path.join(board, "epoch"), purge_step=purge_epoch)}

    def scalars(self, values: dict, step: int, prefix: str = "train") -> None:
        """Write `values` for `step` to TensorBoard under `prefix/` (train or epoch)."""
        writer = self._writers.get(prefix)
        if writer is None:
            return
        for key, value in values.items():
            if value is not None:
                writer.add_scalar(f"{prefix}/{key}", value, step)

    def epoch(self, record: dict) -> None:
        """Append one line of per-epoch metrics (NaN and infinities as null)."""
        if not self.enabled:
            return
        clean = _finite_or_none(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")
        self.scalars({k: v for k, v in clean.items() if k != "epoch"}, record["epoch"], "epoch")
        self._writers["epoch"].flush()

    def rewrite(self, history: list[dict]) -> None:
        """Make `metrics.jsonl` exactly these epoch records (those of the checkpoint a run resumes from)."""
        if self.enabled:
            save_text("".join(json.dumps(_finite_or_none(r), allow_nan=False) + "\n" for r in history), self.path)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
