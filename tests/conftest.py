"""Shared fixtures: paths, the tiny config and a way to run main.py as a user would."""

import hashlib
import os
import re
import subprocess
import sys

import pytest

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
