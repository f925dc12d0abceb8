"""Rank-aware logging: coloured console on rank 0, a log file per rank, metrics as JSON lines and TensorBoard."""

import json
import logging
import os
import sys
from typing import Optional

from termcolor import colored


class _ColourFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = {logging.WARNING: "yellow", logging.ERROR: "red"}.get(record.levelno)
        return colored(text, colour) if colour else text


def create_logger(output_dir: Optional[str], rank: int, name: str = "swin") -> logging.Logger:
    """A logger that prints on rank 0 (coloured on a terminal) and writes `log_rank{rank}.txt` in `output_dir`."""
    logger = logging.getLogger(f"{name}.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = "[%(asctime)s %(name)s] %(message)s"
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        formatter = _ColourFormatter if sys.stdout.isatty() else logging.Formatter
        console.setFormatter(formatter(fmt, datefmt="%H:%M:%S"))
        logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, f"log_rank{rank}.txt"), mode="a")
        file_handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


class MetricsWriter:
    """Scalars to `metrics.jsonl` (one JSON object per call) and TensorBoard, on the main rank only."""

    def __init__(self, output_dir: str, enabled: bool) -> None:
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._tensorboard = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        """Write `values` for `step` to TensorBoard under `prefix/`."""
        if self._tensorboard is None:
            return
        for key, value in values.items():
            self._tensorboard.add_scalar(f"{prefix}/{key}" if prefix else key, value, step)

    def epoch(self, record: dict) -> None:
        """Append one line of per-epoch metrics."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.scalars({k: v for k, v in record.items() if k != "epoch"}, record["epoch"], "epoch")
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
