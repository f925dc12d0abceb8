"""checkpoints/download.py: weights by URL are fetched once into the cache, checked, and never half kept.
"""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_CFG, assert_torchrun_user_error, run_main

from checkpoints import download
from config import load_config
from models import build_model, zoo

ZOO_PATH = "/SwinTransformer/storage/releases/download/v1.0.0/"


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(load_config(TINY_CFG)).eval()
    path = tmp_path / "source.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path.read_bytes()


def cached_files(torch_home) -> list[str]:
    """The names of the files in the torch hub cache, in its subfolders too."""
    folder = os.path.join(torch_home, "hub", "checkpoints")
    return sorted(name for _, _, names in os.walk(folder) for name in names)


def test_a_url_is_downloaded_once_with_progress_then_read_from_the_cache(server, tiny_checkpoint, tmp_path,
                                                                          monkeypatch):
    _, body = tiny_checkpoint
    server.routes[ZOO_PATH + "swin_tiny_test.pth"] = (200, body, None)
    url, home = server.url(ZOO_PATH + "swin_tiny_test.pth"), str(tmp_path / "torch_home")
    args = ("--cfg", TINY_CFG, "--eval", "--pretrained", url, "--output", str(tmp_path / "out"))
    first = run_main(*args, env={"TORCH_HOME": home})
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"downloading {url}" in first.stderr and "100%" in first.stderr
    assert cached_files(home) == ["swin_tiny_test.pth"]
    monkeypatch.setenv("TORCH_HOME", home)
    with open(download.cache_path(url), "rb") as f:
        assert f.read() == body
    second = run_main(*args, env={"TORCH_HOME": home})
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(server.requests) == 1 and "downloading" not in second.stderr
    top1 = [line.split("top-1 ")[1].split("%")[0] for line in (first.stdout, second.stdout) for line in
            line.splitlines() if "eval on" in line]
    assert len(top1) == 2 and top1[0] == top1[1]


@pytest.mark.parametrize("failure", ["cut transfer", "404", "wrong hash", "not a checkpoint", "offline"])
def test_a_failed_download_is_one_line_and_leaves_nothing_in_the_cache(failure, server, tiny_checkpoint, tmp_path,
                                                                        monkeypatch):
    _, body = tiny_checkpoint
    name = {"wrong hash": "tiny-deadbeef.pth"}.get(failure, "tiny.pth")
    route = {"cut transfer": (200, body[: len(body) // 2], len(body)), "404": None,
             "wrong hash": (200, body, None), "not a checkpoint": (200, b"<html>moved</html>", None),
             "offline": None}[failure]
    if route is not None:
        server.routes[ZOO_PATH + name] = route
    url = server.url(ZOO_PATH + name) if failure != "offline" else f"http://127.0.0.1:9{ZOO_PATH}{name}"
    home = tmp_path / "torch_home"
    result = run_main("--cfg", TINY_CFG, "--eval", "--pretrained", url, "--output", str(tmp_path / "out"),
                      env={"TORCH_HOME": str(home)})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    monkeypatch.setenv("TORCH_HOME", str(home))
    expected_path = download.cache_path(url)
    assert expected_path.startswith(os.path.join(str(home), "hub", "checkpoints")) and expected_path.endswith(name)
    assert url in errors[0] and expected_path in errors[0], errors[0]
    assert {"cut transfer": "stopped after", "404": "HTTP 404", "wrong hash": "SHA-256",
            "not a checkpoint": "not a PyTorch checkpoint", "offline": "offline?"}[failure] in errors[0]
    assert cached_files(str(home)) == []


def test_a_file_whose_hash_matches_its_name_is_kept(server, tiny_checkpoint, tmp_path, monkeypatch):
    _, body = tiny_checkpoint
    name = f"tiny-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    server.routes[ZOO_PATH + name] = (200, body, None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = download.local_weights(server.url(ZOO_PATH + name), show_progress=False)
    assert os.path.basename(path) == name and open(path, "rb").read() == body


@pytest.mark.parametrize("name", ["tiny-20240101.pth", "tiny-12345678.pth"])
def test_a_date_or_version_in_a_file_name_is_not_taken_for_a_hash(name, server, tiny_checkpoint, tmp_path,
                                                                   monkeypatch):
    _, body = tiny_checkpoint
    server.routes[ZOO_PATH + name] = (200, body, None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = download.local_weights(server.url(ZOO_PATH + name), show_progress=False)
    assert open(path, "rb").read() == body


def test_urls_that_differ_anywhere_are_cached_apart_and_each_gives_its_own_weights(server, tmp_path, monkeypatch):
    """Two URLs ending in the same file name (another query, another folder) never share a download."""
    bodies = {}
    for seed, route in enumerate(["/a/tiny.pth?v=1", "/a/tiny.pth?v=2", "/b/tiny.pth"]):
        torch.manual_seed(seed)
        target = tmp_path / f"w{seed}.pth"
        torch.save({"model": {"w": torch.randn(3)}}, target)
        bodies[route] = target.read_bytes()
        server.routes[route] = (200, bodies[route], None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    paths = {route: download.local_weights(server.url(route), show_progress=False) for route in bodies}
    assert len(set(paths.values())) == 3
    for route, path in paths.items():
        assert open(path, "rb").read() == bodies[route], route
    assert all(os.path.basename(p) == "tiny.pth" for p in paths.values()) and len(server.requests) == 3
    entry = zoo.entries()[0]  # published files keep the name torch.hub and timm give them
    assert download.cache_path(entry.url) == os.path.join(str(tmp_path / "home"), "hub", "checkpoints",
                                                         os.path.basename(entry.url))


def test_a_cut_legacy_format_download_is_refused_and_not_kept(server, tmp_path, monkeypatch):
    """torch's legacy (non-zip) format has no checksums: a transfer cut short without a length must still be
    refused, not cached."""
    target = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.randn(64, 64)}}, target, _use_new_zipfile_serialization=False)
    body = target.read_bytes()
    server.routes["/legacy.pth"] = (200, body[: len(body) - 100], len(body) - 100)  # the server sends less, honestly
    server.routes["/whole.pth"] = (200, body, None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    with pytest.raises(download.CheckpointError, match="not a whole PyTorch checkpoint"):
        download.local_weights(server.url("/legacy.pth"), show_progress=False)
    assert cached_files(str(tmp_path / "home")) == []
    assert open(download.local_weights(server.url("/whole.pth"), show_progress=False), "rb").read() == body


def test_two_ranks_download_once_and_a_failed_download_is_one_line_from_rank_0(server, tiny_checkpoint, tmp_path):
    _, body = tiny_checkpoint
    server.routes[ZOO_PATH + "tiny.pth"] = (200, body, None)
    home = str(tmp_path / "torch_home")

    def torchrun(url: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   os.path.join(ROOT, "main.py"), "--cfg", TINY_CFG, "--eval", "--pretrained", url, "--output",
                   str(tmp_path / "out")]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": home})

    result = torchrun(server.url(ZOO_PATH + "tiny.pth"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert server.requests == [ZOO_PATH + "tiny.pth"] and cached_files(home) == ["tiny.pth"]
    missing = torchrun(server.url(ZOO_PATH + "gone.pth"))
    assert_torchrun_user_error(missing, "HTTP 404", os.path.join(home, "hub", "checkpoints"), "gone.pth")
    assert cached_files(home) == ["tiny.pth"]
