"""Shared fixtures: paths, the tiny config and a way to run main.py as a user would."""

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
DATASETS = os.path.join(SHARED, "datasets")
TINY_CFG = os.path.join(ROOT, "tests", "configs", "tiny.yaml")

sys.path.insert(0, ROOT)


def run_main(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python main.py ARGS` in a subprocess from the project root."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one `error: ...` line on stderr naming every fragment, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def requires_shared(relative: str):
    """Skip, with the reason, where ../shared/<relative> is absent (a user's fresh clone has no ../shared)."""
    return pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, relative)),
                              reason=f"../shared/{relative} is not beside this checkout")


def requires_dataset(name: str):
    return requires_shared(os.path.join("datasets", name))


def assert_torchrun_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Under torchrun: exactly one `error: ...` line (rank 0's) naming every fragment, and exit code 2 from every
    rank (torchrun itself exits with 1 and reports the ranks' codes)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", result.stderr)
    assert codes and set(codes) == {"2"}, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own 256 KiB file system; skips where tmpfs cannot be mounted (it needs root)."""
    disk = tmp_path / "small_disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
                      ).returncode:
        pytest.skip("a small tmpfs cannot be mounted here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)  # an open log file keeps it busy


@pytest.fixture
def full_disk(small_disk):
    """`small_disk` filled to the last byte by `filler.bin`."""
    with open(small_disk / "filler.bin", "wb", buffering=0) as filler:
        for size in (4096, 1):
            try:
                while True:
                    filler.write(b"\0" * size)
            except OSError:
                pass
    return small_disk


def digest(folder: str) -> dict:
    """A hash of every regular file below `folder` except the run logs, which are appended to by design."""
    hashes = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if name.startswith("log_rank"):
                continue
            if not os.path.isfile(path):  # a FIFO or device, which reading would block on
                hashes[path] = "not a regular file"
                continue
            with open(path, "rb") as f:
                hashes[path] = hashlib.sha256(f.read()).hexdigest()
    return hashes


# Training runs as a user starts them: the paper's recipe on the built-in digits, with two loader workers.
PAPER_RECIPE = ("DATA.DATASET", "digits", "DATA.BATCH_SIZE", "32", "DATA.NUM_WORKERS", "2", "TRAIN.EPOCHS", "2",
                "AUG.AUTO_AUGMENT", "'rand-m9-mstd0.5-inc1'", "AUG.COLOR_JITTER", "0.4", "AUG.REPROB", "0.25",
                "AUG.MIXUP", "0.8", "AUG.CUTMIX", "1.0", "MODEL.DROP_PATH_RATE", "0.2", "PRINT_FREQ", "1")
# Figures that depend on the machine's speed, not on what was trained.
# Figures that differ between an interrupted-and-resumed run and an uninterrupted one by design.
PER_RUN = ("train_img_s", "train_s", "val_s", "run")


def run_dir(output) -> str:
    return os.path.join(str(output), "swin_tiny_test", "default")


def command(output, *opts: str, launcher: tuple = (), flags: tuple = ()) -> list:
    return [sys.executable, *launcher, os.path.join(ROOT, "main.py"), "--cfg", TINY_CFG, "--output", str(output),
            *flags, "--opts", *PAPER_RECIPE, *opts]


def torchrun(nproc: int = 2, *extra: str) -> tuple:
    return ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *extra)


def run(cmd: list, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def interrupt_after(cmd: list, pattern: str, sig: int = signal.SIGTERM, group: bool = False,
                    again_after: Optional[float] = None) -> subprocess.CompletedProcess:
    """Start `cmd`, send `sig` once a stdout line matches `pattern` (and again `again_after` seconds later), and
    wait for the end. With `group` the signal goes to every process of the run, loader workers included, as
    Ctrl-C or a closed terminal sends it."""
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=group)
    for line in process.stdout:
        if re.search(pattern, line):
            for delay in (0.0,) if again_after is None else (0.0, again_after):
                time.sleep(delay)
                with contextlib.suppress(ProcessLookupError):  # it may have ended before a repeat
                    os.killpg(process.pid, sig) if group else process.send_signal(sig)
            break
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def weights(output, name: str = "ckpt_epoch_1.pth") -> dict:
    return torch.load(os.path.join(run_dir(output), name), weights_only=True)["model"]


def assert_same_weights(expected: dict, actual: dict) -> None:
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"


def metrics_lines(output) -> list:
    with open(os.path.join(run_dir(output), "metrics.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl")) for line in f]
    return [{k: v for k, v in line.items() if k not in PER_RUN} for line in lines]


# One small data set in both layouts: `<split>.zip` with its map file, and the same images in class folders.
LAYOUT_CLASSES = ("ant", "bee")


def image_bytes(index: int) -> bytes:
    """A small PNG, a different colour for each index."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), (37 * index % 256, 90 * (index % 2), 200), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def member(index: int) -> str:
    """The name in the zip (and below the split's folder) of image `index`; classes alternate."""
    return f"{LAYOUT_CLASSES[index % 2]}/{index}.png"


def write_layouts(root: str, counts: dict[str, int]) -> None:
    """`<split>.zip` + `<split>_map.txt` and the same images as `<split>/<class>/` folders, `counts[split]` each."""
    for split, count in counts.items():
        with zipfile.ZipFile(os.path.join(root, f"{split}.zip"), "w") as archive:
            for i in range(count):
                archive.writestr(member(i), image_bytes(i))
                os.makedirs(os.path.join(root, split, LAYOUT_CLASSES[i % 2]), exist_ok=True)
                with open(os.path.join(root, split, member(i)), "wb") as f:
                    f.write(image_bytes(i))
        with open(os.path.join(root, f"{split}_map.txt"), "w") as f:
            f.writelines(f"{member(i)}\t{i % 2}\n" for i in range(count))


def config_for(root: str, zip_mode: bool, cache_mode: str = "part"):
    """The tiny config reading `root`'s layouts (zips with `zip_mode`), two classes, batches of two."""
    from config import load_config

    return load_config(TINY_CFG, ("DATA.DATASET", "'imagenet'", "DATA.DATA_PATH", root, "DATA.ZIP_MODE",
                                  str(zip_mode), "DATA.CACHE_MODE", f"'{cache_mode}'", "DATA.BATCH_SIZE", "2",
                                  "MODEL.NUM_CLASSES", "2"))
