"""No lost work: SIGKILL while saving, non-finite losses, and bad input through main.py (stop signals and their
resumption: test_resume)."""

import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import ROOT, TINY_CFG, assert_user_error, digest, run_main
from PIL import Image
from timm.scheduler import StepLRScheduler

from checkpoints.run_folder import prune_checkpoints, training_checkpoints
from jobs import engine
from runtime import Runtime

DIGITS = ("--opts", "DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "20")


def run_dir(output) -> str:
    return os.path.join(str(output), "swin_tiny_test", "default")


def popen_main(output, *extra: str, script: tuple[str, ...] = ("main.py",)) -> subprocess.Popen:
    command = [sys.executable, *[os.path.join(ROOT, part) if part.endswith(".py") else part for part in script],
               "--cfg", TINY_CFG, "--output", str(output), *extra, *DIGITS]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_line(process: subprocess.Popen, pattern: str) -> str:
    for line in process.stdout:
        if re.search(pattern, line):
            return line
    raise AssertionError(f"the run ended before printing {pattern!r}: {process.stderr.read()[-2000:]}")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    output = tmp_path_factory.mktemp("straight")
    result = run_main("--cfg", TINY_CFG, "--output", str(output), *DIGITS)
    assert result.returncode == 0, result.stderr[-2000:]
    return output


def test_sigkill_while_saving_resumes_from_the_previous_good_checkpoint(tmp_path):
    process = popen_main(tmp_path, script=("tests/slow_save_main.py", "ckpt_epoch_1"))
    wait_for_line(process, "SLOW-SAVE-STARTED")
    process.kill()
    process.communicate(timeout=60)
    files = os.listdir(run_dir(tmp_path))
    assert "ckpt_epoch_0.pth" in files and "ckpt_epoch_1.pth" not in files
    # A checkpoint truncated by something else (a copy cut short) must be skipped too.
    folder = run_dir(tmp_path)
    shutil.copy(os.path.join(folder, "ckpt_epoch_0.pth"), os.path.join(folder, "ckpt_epoch_5.pth"))
    with open(os.path.join(run_dir(tmp_path), "ckpt_epoch_5.pth"), "r+b") as f:
        f.truncate(1000)
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path), *DIGITS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"auto-resume skips .*ckpt_epoch_5\.pth", result.stdout)
    assert re.search(r"auto-resume from .*ckpt_epoch_0\.pth", result.stdout) and "epoch 1:" in result.stdout
    assert torch.load(os.path.join(run_dir(tmp_path), "ckpt_epoch_1.pth"), weights_only=True)["epoch"] == 1


class NaNOnBatches(torch.nn.Module):
    """A linear classifier whose output is NaN on the batches listed, to test the skip logic."""

    def __init__(self, bad_batches: set) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.bad_batches = bad_batches
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.calls += 1
        return out * float("nan") if self.calls in self.bad_batches else out


def nan_context(bad_batches: set, max_nonfinite: int) -> engine.TrainContext:
    torch.manual_seed(0)
    model = NaNOnBatches(bad_batches)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = StepLRScheduler(optimizer, decay_t=100, t_in_epochs=False)
    rt = Runtime(torch.device("cpu"))
    return engine.TrainContext(model=model, criterion=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                               scheduler=scheduler, scaler=rt.make_scaler(), rt=rt,
                               logger=logging.getLogger("test"), max_nonfinite=max_nonfinite)


def batches(count: int) -> list:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 4, generator=generator), torch.tensor([0, 1, 2, 0])) for _ in range(count)]


def test_non_finite_loss_skips_the_step_and_keeps_the_weights():
    ctx = nan_context({2}, max_nonfinite=3)
    data = batches(3)
    engine.train_one_epoch(ctx, data[:1], epoch=0)
    before = ctx.model.linear.weight.detach().clone()
    stats = engine.train_one_epoch(ctx, data[1:2], epoch=0, start_batch=1)
    assert stats["skipped_steps"] == 1.0 and torch.equal(ctx.model.linear.weight, before)
    engine.train_one_epoch(ctx, data[2:], epoch=0, start_batch=2)
    assert not torch.equal(ctx.model.linear.weight, before) and torch.isfinite(ctx.model.linear.weight).all()


def test_too_many_non_finite_losses_stop_with_one_line_naming_the_step():
    ctx = nan_context({1, 2, 3}, max_nonfinite=3)
    with pytest.raises(engine.DivergedError, match=r"non-finite for 3 steps in a row up to epoch 4 step 2"):
        engine.train_one_epoch(ctx, batches(5), epoch=4)


def _image_folder(root, corrupt: bool = False) -> str:
    for split in ("train", "val"):
        for label in ("a", "b"):
            os.makedirs(root / split / label)
            for i in range(8 if split == "train" else 1):
                Image.new("RGB", (32, 32), (40 * i, 100, 0)).save(root / split / label / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "3.png").write_bytes(b"this is not a PNG")
    return str(root)


BAD_INPUTS = {
    "wrong data path": (("--data-path", "/no/such/folder", "--opts", "DATA.DATASET", "'imagenet'"),
                        ("/no/such/folder", "does not exist")),
    "empty data folder": (("--data-path", "{empty}", "--opts", "DATA.DATASET", "'imagenet'"),
                          ("train does not exist",)),
    "unknown config key": (("--opts", "TRAIN.EPOCS", "3"), ("TRAIN.EPOCS", "did you mean TRAIN.EPOCHS")),
    "wrong type": (("--opts", "TRAIN.BASE_LR", "fast"), ("TRAIN.BASE_LR", "float")),
    "negative batch size": (("--batch-size", "-4"), ("DATA.BATCH_SIZE is -4",)),
    "windows cannot tile": (("--opts", "DATA.IMG_SIZE", "48", "MODEL.SWIN.WINDOW_SIZE", "5"), ("does not tile",)),
    "eval without weights": (("--eval",), ("--eval needs weights",)),
    "text file as checkpoint": (("--resume", "{text}"), ("notes.txt cannot be read",)),
    "truncated checkpoint": (("--resume", "{truncated}"), ("cut.pth cannot be read",)),
    "missing checkpoint": (("--resume", "/no/such.pth"), ("/no/such.pth does not exist",)),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_damages_nothing(case, straight, tmp_path):
    """Each bad command runs against the output folder of a finished run, which must stay byte-identical."""
    previous_run = straight
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with open(os.path.join(run_dir(previous_run), "ckpt_epoch_1.pth"), "rb") as f:
        (tmp_path / "cut.pth").write_bytes(f.read()[:5000])
    names = {"empty": str(tmp_path / "empty"), "text": str(tmp_path / "notes.txt"),
             "truncated": str(tmp_path / "cut.pth")}
    flags, fragments = BAD_INPUTS[case]
    flags = [flag.format(**names) for flag in flags]
    before = digest(run_dir(previous_run))
    result = run_main("--cfg", TINY_CFG, "--output", str(previous_run), *flags)
    assert_user_error(result, *fragments)
    assert digest(run_dir(previous_run)) == before


def test_corrupt_image_during_training_names_the_file(tmp_path):
    root = _image_folder(tmp_path / "data", corrupt=True)
    for workers in ("0", "1"):
        result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", root, "--batch-size",
                          "4", "--opts", "DATA.DATASET", "'imagenet'", "MODEL.NUM_CLASSES", "2", "DATA.NUM_WORKERS",
                          workers)
        assert_user_error(result, "3.png cannot be decoded")


def test_corrupt_image_can_be_skipped_and_counted(tmp_path):
    root = _image_folder(tmp_path / "data", corrupt=True)
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", root, "--batch-size", "4",
                      "--opts", "DATA.DATASET", "'imagenet'", "MODEL.NUM_CLASSES", "2", "DATA.DECODE_ERRORS", "'skip'")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("skipped: image") == 2  # once per epoch


def test_ddp_with_more_processes_than_validation_images(tmp_path):
    root = _image_folder(tmp_path / "data")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
               os.path.join(ROOT, "main.py"), "--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path",
               root, "--batch-size", "2", "--opts", "DATA.DATASET", "'imagenet'", "MODEL.NUM_CLASSES", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"epoch 1: val top-1 (0|50|100)\.00%", result.stdout)


def test_zip_layout_written_by_make_map_trains_with_part_cache(tmp_path):
    """The zip layout end to end: make_map writes the map, the zip holds the folder tree."""
    root = _image_folder(tmp_path / "data")
    for split in ("train", "val"):
        with zipfile.ZipFile(tmp_path / "data" / f"{split}.zip", "w") as archive:
            for dirpath, _, files in os.walk(os.path.join(root, split)):
                for name in files:
                    full = os.path.join(dirpath, name)
                    archive.write(full, os.path.relpath(full, os.path.join(root, split)))
        result = subprocess.run([sys.executable, "-m", "data.make_map", os.path.join(root, split)], cwd=ROOT,
                                capture_output=True, text=True)
        (tmp_path / "data" / f"{split}_map.txt").write_text(result.stdout)
    result = run_main("--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--data-path", root, "--zip",
                      "--cache-mode", "part", "--batch-size", "4", "--opts", "DATA.DATASET", "'imagenet'",
                      "MODEL.NUM_CLASSES", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch 1: val top-1" in result.stdout


def test_pruning_keeps_the_newest_and_never_the_protected(tmp_path):
    names = ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "ckpt_epoch_2_step_10.pth", "ckpt_epoch_2.pth", "best.pth"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    resumed = str(tmp_path / "ckpt_epoch_0.pth")
    prune_checkpoints(str(tmp_path), 2, (resumed,), logging.getLogger("test"))
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "ckpt_epoch_0.pth", "ckpt_epoch_2.pth",
                                            "ckpt_epoch_2_step_10.pth"]
    assert [os.path.basename(p) for p in training_checkpoints(str(tmp_path))] == [
        "ckpt_epoch_2.pth", "ckpt_epoch_2_step_10.pth", "ckpt_epoch_0.pth"]
