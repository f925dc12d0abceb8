"""main.py with a checkpoint write that stalls half-way, so a test can SIGKILL the run while it saves.

Usage: python tests/slow_save_main.py STALL_ON MAIN_ARGS... ; the first save whose path contains
STALL_ON writes half of its bytes, prints SLOW-SAVE-STARTED and sleeps.
"""

import io
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main  # noqa: E402

_real_save = torch.save


def _stalling_save(obj: object, path: str, *args: object, **kwargs: object) -> None:
    if STALL_ON not in str(path):
        _real_save(obj, path, *args, **kwargs)
        return
    buffer = io.BytesIO()
    _real_save(obj, buffer, *args, **kwargs)
    with open(path, "wb") as f:
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        print("SLOW-SAVE-STARTED", flush=True)
        time.sleep(120)


if __name__ == "__main__":
    STALL_ON = sys.argv[1]
    torch.save = _stalling_save
    sys.exit(main.main(sys.argv[2:]))
