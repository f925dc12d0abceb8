"""jobs/stopping.py: a second stop signal ends the process at once; a copy forwarded by a launcher does not.
"""

import signal
import sys

from conftest import ROOT, run

STOP_FLAG_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from jobs.stopping import StopFlag
StopFlag.REPEAT_GRACE_S = float(sys.argv[2])
with StopFlag() as flag:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    print("still running, signal", flag.signum)
"""


def test_a_second_signal_ends_the_process_at_once_but_a_forwarded_copy_does_not():
    forwarded = run([sys.executable, "-c", STOP_FLAG_SCRIPT, ROOT, "5"])
    assert forwarded.returncode == 0 and f"still running, signal {int(signal.SIGTERM)}" in forwarded.stdout
    second = run([sys.executable, "-c", STOP_FLAG_SCRIPT, ROOT, "0"])
    assert second.returncode == -signal.SIGTERM and "still running" not in second.stdout


AFTER_THE_BLOCK_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from jobs.stopping import StopFlag
with StopFlag() as flag:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again while the loader shuts down, within the grace
time.sleep(0.1)
print("still running after the block, signal", flag.signum)
"""


def test_a_repeated_ctrl_c_after_training_stopped_is_still_the_stop_flags():
    result = run([sys.executable, "-c", AFTER_THE_BLOCK_SCRIPT, ROOT])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"still running after the block, signal {int(signal.SIGINT)}" in result.stdout
