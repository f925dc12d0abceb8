"""Shared fixtures: paths, the tiny config and a way to run main.py as a user would."""

import os
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


def requires_dataset(name: str):
    return pytest.mark.skipif(not os.path.isdir(os.path.join(DATASETS, name)),
                              reason=f"../shared/datasets/{name} is not beside this checkout")
