"""cli.run_command, the one error path of main.py and every tool: user errors, a full or read-only disk and
Ctrl-C are one line with their exit codes; other errors stay bugs with their traceback.
"""

import errno
import os
import signal

import pytest
from bad_inputs import assert_one_error_line, call

from cli import run_command


def _raises(error: BaseException):
    def body() -> int:
        raise error
    return body


@pytest.mark.parametrize("error, fragments", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/preds.json"),
     ("/out/preds.json cannot be written", os.strerror(errno.ENOSPC))),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/out/m.onnx"), ("/out/m.onnx cannot be written",)),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), ("an output file cannot be written",)),
])
def test_the_shared_error_path_makes_a_full_or_read_only_disk_one_line(error, fragments, capsys):
    code, out, err = call(lambda argv: run_command(_raises(error)), [], capsys)
    assert_one_error_line(code, out, err, *fragments)


def test_ctrl_c_outside_training_is_one_line_and_the_signals_exit_code(capsys):
    code = run_command(_raises(KeyboardInterrupt()))
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGINT and err.count("\n") == 1 and err.startswith("interrupted:")
    assert run_command(_raises(KeyboardInterrupt()), show_errors=False) == 130 and not capsys.readouterr().err


def test_other_os_errors_stay_bugs_with_their_traceback():
    with pytest.raises(OSError, match="Input/output error"):
        run_command(_raises(OSError(errno.EIO, os.strerror(errno.EIO))))
