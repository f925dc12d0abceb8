"""The one error path of main.py and every tool: strict flags, and each user mistake as one `error:` line.

Flags: an unknown or misspelt flag, a missing value, a flag given twice, all end in one line
(with the nearest flag where there is one) and exit code 2. A `UserError` anywhere in the
command, or an OS error on a file the user named (a folder where a file was expected, no
permission), becomes one line and exit code 2; anything else is a bug and keeps its traceback.
"""

import argparse
import contextlib
import difflib
import itertools
import signal
import sys
from typing import Callable, Iterator, NoReturn, Optional, TextIO

from configuration.checks import SEED_RANGE
from utils import WRITE_ERRNOS, UserError, discard_stdout, report_user_error, tell


class StrictParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line and refuses a flag given twice.

    `flag_hints` maps flags of other tools (timm's train.py: --lr, --epochs ...) to the config key
    or flag that does the same here, so a user trying them is told what to type instead.
    """

    def __init__(self, *args: object, flag_hints: Optional[dict[str, str]] = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.flag_hints = flag_hints or {}

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments:" in message:
            message += self._hint(message.split(":", 1)[1].split())
        tell(f"error: {message}; see `{self.prog} --help`")
        sys.exit(2)

    def print_help(self, file: Optional[TextIO] = None) -> None:
        """--help through the commands' error path: argparse drops a failed write silently and exits 0."""
        if file is not None:
            return super().print_help(file)
        code = run_command(lambda: print(self.format_help(), end="") or 0)
        if code:
            sys.exit(code)

    def _hint(self, unknown: list[str]) -> str:
        for position, word in enumerate(unknown):
            flag, _, inline = word.partition("=")
            if flag in self.flag_hints:
                target, _, note = self.flag_hints[flag].partition("|")
                # The value is the last word before the next flag: timm's --input-size 3 224 224 is a size of 224.
                values = [inline] if inline else list(itertools.takewhile(_is_value, unknown[position + 1:]))
                value = values[-1] if values else ""
                if target.startswith("-"):
                    return f" (here it is {target}{' ' + value if value else ''}{note})"
                return f" (here {flag} is a config key: --opts {target} {value or 'VALUE'}{note})"
        flags = [s for a in self._actions for s in a.option_strings]
        close = [m for u in unknown if u.startswith("-") for m in difflib.get_close_matches(u, flags, n=1)]
        return f" (did you mean {close[0]}?)" if close else ""

    def parse_args(self, args: Optional[list[str]] = None, namespace: Optional[argparse.Namespace] = None
                   ) -> argparse.Namespace:
        argv = sys.argv[1:] if args is None else list(args)
        for action in self._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            uses = [a for a in argv if a.split("=", 1)[0] in action.option_strings]
            if len(uses) > 1:
                self.error(f"{action.option_strings[0]} is given {len(uses)} times; give it once"
                           + (" with all its values" if action.nargs == "+" else ""))
        return super().parse_args(argv, namespace)


def _is_value(word: str) -> bool:
    """Whether a word of the command line is a value rather than a flag (a negative number is a value)."""
    if not word.startswith("-"):
        return True
    try:
        float(word)
    except ValueError:
        return False
    return True


def run_command(body: Callable[[], int], show_errors: bool = True) -> int:
    """Run a command's body; a user mistake is one `error:` line (when `show_errors`) and exit code 2."""
    try:
        with _stdout_errors_named():
            code = body()
            sys.stdout.flush()  # a full or closed standard output fails here, inside the error path, not at exit
        return code
    except BrokenPipeError:  # the reader of our output left (`| head`): stop quietly, as other command lines do
        discard_stdout()
        return 128 + signal.SIGPIPE
    except UserError as err:
        return report_user_error(err, show=show_errors or not getattr(err, "agreed", False))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError) as err:
        what = f"{err.filename}" if err.filename else "a file"
        return report_user_error(UserError(f"{what} cannot be used ({err.strerror}); check the path and its "
                                           "permissions"), show=show_errors)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        what = f"{err.filename}" if err.filename else "an output file"
        return report_user_error(UserError(f"{what} cannot be written ({err.strerror}); free space on that disk or "
                                           "write somewhere else"), show=show_errors)
    except KeyboardInterrupt:  # Ctrl-C outside training, which saves and stops by itself
        if show_errors:
            tell("interrupted: stopped by Ctrl-C; nothing new was saved; rerun the command to carry on")
        return 128 + signal.SIGINT


class _NamedStdout:
    """Standard output whose write errors carry the name "standard output", so a full disk or /dev/full behind
    it is reported as such rather than as some output file."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        return self._named(self._stream.write, text)

    def flush(self) -> None:
        self._named(self._stream.flush)

    @staticmethod
    def _named(call: Callable, *args: object):
        try:
            return call(*args)
        except OSError as err:
            if err.filename is None and not isinstance(err, BrokenPipeError):
                err.filename = "standard output"
                discard_stdout()  # drop the text still buffered, so exit does not fail on it again
            raise


@contextlib.contextmanager
def _stdout_errors_named() -> Iterator[None]:
    stream = sys.stdout
    sys.stdout = _NamedStdout(stream)
    try:
        yield
    finally:
        sys.stdout = stream


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type for counts: a whole number of at least 1."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def seed_int(text: str) -> int:
    """argparse type for seeds: the range of config key SEED, which every generator here accepts."""
    value = _whole_number(text)
    if not SEED_RANGE.holds(value):
        raise argparse.ArgumentTypeError(f"{value} is not a seed: it must be {SEED_RANGE.describe()}")
    return value
