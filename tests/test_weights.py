"""Weights by zoo name, URL or file: downloads from a local HTTP server into the torch hub cache, and the timm /
torchvision layouts read through --pretrained."""

import csv
import hashlib
import http.server
import logging
import os
import subprocess
import sys
import threading

import pytest
import timm
import torch
import torchvision
from conftest import (
    ROOT,
    SHARED,
    TINY_CFG,
    assert_torchrun_user_error,
    assert_user_error,
    requires_shared,
    run_main,
)

from checkpoints import download
from checkpoints.weights import load_pretrained
from config import config_from_weights, load_config
from models import build_model, zoo
from models.convert import to_timm, to_torchvision
from tools import predict

ZOO_PATH = "/SwinTransformer/storage/releases/download/v1.0.0/"


class FileServer:
    """Serves `routes` ({path: (status, body, advertised length or None)}) on 127.0.0.1 and counts requests."""

    def __init__(self) -> None:
        self.routes: dict = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                status, body, length = server.routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"


@pytest.fixture
def server():
    served = FileServer()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


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


def test_a_file_named_like_a_zoo_entry_is_the_file(tmp_path, monkeypatch):
    """--resume NAME.pth where a file of that name exists: the file, its own config, never the zoo's weights."""
    name = "swin_tiny_patch4_window7_224.pth"
    torch.manual_seed(0)
    config = load_config(TINY_CFG)
    torch.save({"model": build_model(config).state_dict(), "config": config.dump()}, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    assert zoo.find(name) is None and download.local_weights(name) == name
    assert config_from_weights(name, "--resume").MODEL.SWIN.EMBED_DIM == config.MODEL.SWIN.EMBED_DIM
    assert zoo.find(name[:-4]) is not None  # the bare name, which is no file here, is still the zoo's


def test_without_cfg_a_url_to_a_checkpoint_of_ours_brings_its_config_and_a_typo_gets_a_suggestion(server, tmp_path):
    torch.manual_seed(0)
    config = load_config(TINY_CFG)
    target = tmp_path / "ours.pth"
    torch.save({"model": build_model(config).state_dict(), "config": config.dump()}, target)
    server.routes["/ours.pth"] = (200, target.read_bytes(), None)
    env = {"TORCH_HOME": str(tmp_path / "home")}
    done = run_main("--eval", "--resume", server.url("/ours.pth"), "--output", str(tmp_path / "out"), env=env)
    assert done.returncode == 0 and "eval on" in done.stdout, done.stderr[-2000:]
    typo = run_main("--eval", "--resume", "swin_tiny_patch4_window7_22", "--output", str(tmp_path / "out"), env=env)
    assert_user_error(typo, "swin_tiny_patch4_window7_22", "did you mean swin_tiny_patch4_window7_224?")


@requires_shared("reference/model_zoo.tsv")
def test_zoo_table_is_the_reference_model_hub():
    reference = os.path.join(SHARED, "reference", "model_zoo.tsv")
    with open(reference, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(e.name, e.url, e.resolution, e.window, e.num_classes, e.top1) for e in zoo.entries()] == \
        [(r["name"], r["url"], int(r["resolution"]), int(r["window"]), int(r["num_classes"]),
          float(r["top1_in1k"]) if r["top1_in1k"] else None) for r in rows]
    for entry, row in zip(zoo.entries(), rows):
        if entry.config:
            assert os.path.basename(entry.config) == os.path.basename(row["reference_config"])
            cfg = config_from_weights(entry.name, "--resume")
            assert (cfg.DATA.IMG_SIZE, cfg.MODEL.NUM_CLASSES) == (entry.resolution, entry.num_classes), entry.name


def test_a_zoo_name_takes_its_url_config_and_cached_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = zoo.find("swin_tiny_patch4_window7_224")
    assert download.source_url(entry.name) == entry.url and zoo.find(entry.url) == entry
    torch.manual_seed(0)
    model = build_model(load_config(os.path.join(ROOT, entry.config))).eval()
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save({"model": model.state_dict()}, download.cache_path(entry.url))
    image = torch.rand(3, 224, 224)
    torchvision.utils.save_image(image, tmp_path / "photo.png")
    assert predict.main([str(tmp_path / "photo.png"), "--resume", entry.name, "--topk", "2", "--output",
                         str(tmp_path / "p.json"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "photo.png: " in out and out.count("(0.") >= 2 and f"wrote 1 predictions to {tmp_path / 'p.json'}" in out


def test_a_zoo_name_with_another_model_in_cfg_names_the_config_to_use(tmp_path):
    result = run_main("--cfg", os.path.join(ROOT, "configs", "swin_small.yaml"), "--pretrained",
                      "swin_tiny_patch4_window7_224", "--output", str(tmp_path))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "configs/swin/swin_tiny_patch4_window7_224.yaml" in errors[0] and "DEPTHS" in errors[0]


def _logits(model: torch.nn.Module, size: int) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("source", ["timm swin", "timm swinv2", "torchvision swin_t", "torchvision swin_v2_t"])
def test_timm_and_torchvision_files_load_through_pretrained(source, tmp_path, caplog):
    cfg_name, size, theirs = {
        "timm swin": ("swin_tiny.yaml", 224, lambda: timm.create_model("swin_tiny_patch4_window7_224")),
        "timm swinv2": ("swinv2/swinv2_tiny_patch4_window8_256.yaml", 256,
                        lambda: timm.create_model("swinv2_tiny_window8_256")),
        "torchvision swin_t": ("swin_tiny.yaml", 224, torchvision.models.swin_t),
        "torchvision swin_v2_t": ("swinv2/swinv2_tiny_patch4_window8_256.yaml", 256, torchvision.models.swin_v2_t),
    }[source]
    torch.manual_seed(1)
    published = theirs().eval()
    path = tmp_path / "theirs.pth"
    torch.save({"state_dict": published.state_dict()} if source.startswith("timm") else published.state_dict(), path)
    ours = build_model(load_config(os.path.join(ROOT, "configs", cfg_name)))
    with caplog.at_level("INFO"):
        load_pretrained(ours, str(path), logging.getLogger("test"))
    layout = source.split()[0]
    assert f"holds {layout}'s layout; converted" in caplog.text
    torch.testing.assert_close(_logits(ours, size), _logits(published, size), atol=2e-5, rtol=1e-4)


def test_converted_layouts_round_trip_into_the_tiny_model(tmp_path, caplog):
    torch.manual_seed(0)
    source = build_model(load_config(TINY_CFG)).eval()

    def prefixed(prefix: str) -> dict:
        return {"model": {f"{prefix}{k}": v for k, v in source.state_dict().items()}}

    for name, state in (("timm", {"state_dict": to_timm(source.state_dict())}),
                        ("tv", {"model": to_torchvision(source.state_dict())}),
                        ("ddp", prefixed("module.")), ("compiled", prefixed("_orig_mod.")),
                        ("compiled_ddp", prefixed("module._orig_mod.")),
                        ("ddp_compiled", prefixed("_orig_mod.module."))):
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        target = build_model(load_config(TINY_CFG))
        load_pretrained(target, str(path), logging.getLogger("test"))
        torch.testing.assert_close(_logits(target, 32), _logits(source, 32), atol=0, rtol=0)


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
