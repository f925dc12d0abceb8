"""Stopping training on a signal: the signal is recorded, training saves at the next optimizer step, and the run
ends with Interrupted, which main.py turns into exit code 128 + the signal."""

import os
import signal
import time

from utils import STOP_SIGNALS


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT/SIGHUP after saving a checkpoint; rerunning the command resumes."""

    def __init__(self, signum: int, path: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}; rerun the same command to resume")
        self.signum = signum


class StopFlag:
    """Records a stop signal (SIGTERM, SIGINT, SIGHUP) instead of dying, so training can save at the next
    optimizer step.

    A second signal ends the process at once, unless it comes within `REPEAT_GRACE_S` of the
    first: launchers forward one Ctrl-C or preemption as a second copy of the same signal. Once a
    signal has been recorded the handler stays after the block, through the loader's shutdown and
    the interpreter's exit, so a repeat there ends the process by that signal, not by a traceback.
    """

    REPEAT_GRACE_S = 2.0

    def __init__(self) -> None:
        self.signum = 0
        self._first_at = 0.0
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.signum:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _record(self, signum: int, _frame: object) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self._first_at = signum, now
        elif now - self._first_at > self.REPEAT_GRACE_S:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
