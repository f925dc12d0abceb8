"""Shared fixtures: paths, the tiny config and a way to run main.py as a user would."""

import contextlib
import hashlib
import http.server
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image
from yacs.config import CfgNode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
DATASETS = os.path.join(SHARED, "datasets")
TINY_CFG = os.path.join(ROOT, "tests", "configs", "tiny.yaml")

sys.path.insert(0, ROOT)

from bad_inputs import image_tree  # noqa: E402

from config import load_config  # noqa: E402
from models import build_model  # noqa: E402
from optimizer import build_optimizer  # noqa: E402


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


@pytest.fixture(autouse=True)
def own_environment():
    """Each test starts from the environment the session started with: an in-process job (a SLURM rendezvous sets
    MASTER_ADDR, for one) must not reach the launches of tests that run after it in the same worker."""
    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


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


def torchrun_main(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node NPROC main.py ARGS` on CPU (gloo), one thread per rank."""
    return run([sys.executable, *torchrun(nproc), os.path.join(ROOT, "main.py"), *args])


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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """The suite's one finished training run: `command(output)` (the paper's recipe, two epochs on the digits, two
    loader workers). Tests read it, resume copies of it and point bad commands at it; none may change it, which is
    checked when the session ends."""
    output = tmp_path_factory.mktemp("finished_run")
    ok(run(command(output)))
    before = digest(run_dir(output))
    yield output
    assert digest(run_dir(output)) == before, "a test changed the shared finished run"


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
    return load_config(TINY_CFG, ("DATA.DATASET", "'imagenet'", "DATA.DATA_PATH", root, "DATA.ZIP_MODE",
                                  str(zip_mode), "DATA.CACHE_MODE", f"'{cache_mode}'", "DATA.BATCH_SIZE", "2",
                                  "MODEL.NUM_CLASSES", "2"))


# Configs and models: the tiny config, the reference configs, and a SimMIM / Swin V2 variant of the tiny one.
def tiny_config(*opts: str) -> CfgNode:
    """The tests' tiny config (32px, two stages) with `opts` on top."""
    return load_config(TINY_CFG, list(opts))


def tiny_model(*opts: str) -> torch.nn.Module:
    """The tiny config's model, seeded, so two calls build the same weights."""
    torch.manual_seed(0)
    return build_model(load_config(TINY_CFG, opts))


def reference_model(cfg_name: str, *opts: str) -> torch.nn.Module:
    """The model of a shipped config (configs/`cfg_name`), seeded."""
    torch.manual_seed(0)
    return build_model(load_config(os.path.join(ROOT, "configs", cfg_name), opts))


def stepped_optimizer(model: torch.nn.Module, fused: bool, name: str = "adamw") -> torch.optim.Optimizer:
    """An optimizer of the tiny config that has taken one step, so it holds state to save and restore."""
    config = load_config(TINY_CFG, ("TRAIN.OPTIMIZER.NAME", repr(name)))
    optimizer = build_optimizer(config, model, 1e-3, fused=fused)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return optimizer


def logits_of(model: torch.nn.Module, size: int) -> torch.Tensor:
    """The model's logits for a fixed random batch of two `size`-pixel images."""
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3)))


SIMMIM = ("MODEL.SIMMIM.PRETRAIN", "True", "DATA.MASK_PATCH_SIZE", "8")
TINY_V2 = ("MODEL.TYPE", "swinv2", "MODEL.SWINV2.EMBED_DIM", "16", "MODEL.SWINV2.DEPTHS", "[2, 2]",
           "MODEL.SWINV2.NUM_HEADS", "[2, 4]", "MODEL.SWINV2.WINDOW_SIZE", "4")


def cosine_lr(step: int, base: float, warmup_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then a cosine over the remaining steps (the reference's WARMUP_PREFIX True)."""
    if step < warmup:
        return warmup_lr + step * (base - warmup_lr) / warmup
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# Images: the shipped data sets, a photo-like picture, and a two-class folder tree.
CIFAR10 = os.path.join(DATASETS, "cifar10")
IMAGENET_SAMPLES = os.path.join(DATASETS, "imagenet-samples")


def photo(width: int, height: int, seed: int = 0, grain: int = 8) -> Image.Image:
    """A smooth random colour picture (features of about `grain` pixels) with some edges (a JPEG of noise would
    be all artefacts)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // grain + 2, width // grain + 2, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.array(img)
    pixels[height // 3:height // 2, :, 0] = 255
    return Image.fromarray(pixels)


def two_class_images(root, corrupt: bool = False) -> str:
    for split in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(root / split / label)
            for i in range(8 if split == "train" else 1):
                Image.new("RGB", (32, 32), (40 * i, 100, 0)).save(root / split / label / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "3.png").write_bytes(b"this is not a PNG")
    return str(root)


# Runs and servers beside the tests: a free port, a local HTTP file server.
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


# The second shared run: four named class folders (the first, `finished_run`, trains on the digits).
# A model the tiny config does not build by itself: the checkpoint alone must carry these.
CLASS_RUN_OPTS = ("MODEL.NUM_CLASSES", "4", "MODEL.SWIN.EMBED_DIM", "24", "MODEL.SWIN.MLP_RATIO", "2.0",
                  "DATA.BATCH_SIZE", "4")


CLASS_RUN_NAMES = ("ant", "bee", "cat", "dog")


@pytest.fixture(scope="session")
def class_run(tmp_path_factory):
    """A finished run on four named class folders, with a model the tiny config does not build by itself (the
    checkpoint alone must carry it): its checkpoint, data and folder, for --eval, the tools and fine-tuning."""
    root = tmp_path_factory.mktemp("travel")
    data = image_tree(str(root / "data"), classes=CLASS_RUN_NAMES, per_class=8, val_per_class=3)
    result = run_main("--cfg", TINY_CFG, "--data-path", data, "--output", str(root / "out"), "--opts",
                      "DATA.DATASET", "'imagenet'", *CLASS_RUN_OPTS)
    assert result.returncode == 0, result.stderr[-2000:]
    return {"root": root, "data": data, "ckpt": str(root / "out" / "swin_tiny_test" / "default" / "best.pth")}


def eval_line(result) -> str:
    assert result.returncode == 0, result.stderr[-2000:]
    return next(line.split("] ", 1)[1] for line in result.stdout.splitlines() if "eval on" in line)
