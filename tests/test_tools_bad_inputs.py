"""Every tool takes bad input as main.py does: one `error:` line naming the thing, exit code 2, no traceback,
and nothing it was pointed at changed.
"""

import errno
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from bad_inputs import assert_one_error_line, call, image_tree, png_bytes
from conftest import ROOT, TINY_CFG, digest

import main as main_py
from data import make_map
from tools import convert, export, plot_metrics, predict, reconstruct, summary, zoo


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool_inputs")
    torch.manual_seed(0)
    from config import load_config
    from models import build_model

    model = build_model(load_config(TINY_CFG))
    paths = {"root": str(root), "ckpt": str(root / "tiny.pth"), "notes": str(root / "notes.txt"),
             "cut": str(root / "cut.pth"), "nan": str(root / "nan.pth"), "images": image_tree(str(root / "imgs")),
             "bad_image": str(root / "bad.png"), "run": str(root / "run"), "garbage_run": str(root / "garbage"),
             "empty_run": str(root / "empty_run"), "file": str(root / "file.txt"), "bad_cfg": str(root / "bad.yaml")}
    torch.save({"model": model.state_dict()}, paths["ckpt"])
    (root / "notes.txt").write_text("not a checkpoint")
    (root / "cut.pth").write_bytes(open(paths["ckpt"], "rb").read()[:3000])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.weight"][0, 0] = float("inf")
    torch.save({"model": state}, paths["nan"])
    (root / "bad.png").write_bytes(png_bytes()[:40])
    record = '{"epoch": 0, "train_loss": 1.0, "val_loss": 1.1, "val_top1": 50.0, "val_top5": 90.0, "lr": 0.001}\n'
    for name, text in (("run", record), ("garbage", "{not json\n"), ("empty_run", "")):
        (root / name).mkdir()
        (root / name / "metrics.jsonl").write_text(text)
    (root / "train_only").mkdir()
    (root / "train_only" / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0}\n')
    paths["train_only"] = str(root / "train_only")
    (root / "val_gap").mkdir()
    (root / "val_gap" / "metrics.jsonl").write_text(record + '{"epoch": 1, "train_loss": 1.0, "lr": 0.001}\n')
    paths["val_gap"] = str(root / "val_gap")
    for name, text in (("odd_epochs", record + record.replace('"epoch": 0', '"epoch": "x"')),
                       ("null_top1", record.replace('"val_top1": 50.0', '"val_top1": null'))):
        (root / name).mkdir()
        (root / name / "metrics.jsonl").write_text(text)
        paths[name] = str(root / name)
    (root / "not_utf8").mkdir()
    (root / "not_utf8" / "metrics.jsonl").write_bytes(b"\xff\xfe" + record.encode())
    paths["not_utf8"] = str(root / "not_utf8")
    pretraining = load_config(TINY_CFG, ["MODEL.SIMMIM.PRETRAIN", "True", "DATA.MASK_PATCH_SIZE", "8"])
    paths["simmim"] = str(root / "simmim.pth")
    torch.save({"model": build_model(pretraining).state_dict(), "config": pretraining.dump()}, paths["simmim"])
    paths["classifier"] = str(root / "classifier.pth")
    torch.save({"model": model.state_dict(), "config": load_config(TINY_CFG).dump()}, paths["classifier"])
    (root / "file.txt").write_text("x")
    (root / "bad.yaml").write_text("TRAIN:\n  EPOCS: 3\n")
    paths["training"] = str(root / "ckpt_epoch_3.pth")  # another run's checkpoint, not an input of the tools
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, paths["training"])
    paths["vit"] = str(root / "vit.pth")  # a ViT's names: blocks.N and a head, no Swin stages
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(6, 2), "head.weight": torch.zeros(3, 2)}},
               paths["vit"])
    paths["names_number"] = str(root / "names_number.pth")
    torch.save({"model": model.state_dict(), "class_names": 7}, paths["names_number"])
    paths["scripted"] = str(root / "scripted.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notes
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), paths["scripted"])
    tabbed = image_tree(str(root / "tabbed"))
    os.rename(os.path.join(tabbed, "train", "a", "0.png"), os.path.join(tabbed, "train", "a", "x\ty.png"))
    paths["tabbed"] = os.path.join(tabbed, "train")
    paths["fifo_folder"] = image_tree(str(root / "fifo_folder"))
    os.mkfifo(os.path.join(paths["fifo_folder"], "train", "a", "waits.jpg"))  # reading it would block forever
    paths["pipe"] = str(root / "pipe.png")  # an output path that is a FIFO: neither replaced nor read
    run_folder = root / "trained"  # a run's folder: its records are no tool's to replace
    run_folder.mkdir()
    for name in ("config.yaml", "config_until_epoch_2.yaml", "log_rank0.txt", "metrics.jsonl", "val_per_class.json",
                 "val_confusion.png"):
        (run_folder / name).write_text(load_config(TINY_CFG).dump() if name.startswith("config") else "kept\n")
    torch.save({"model": model.state_dict(), "config": load_config(TINY_CFG).dump()}, run_folder / "best.pth")
    paths["trained"] = str(run_folder)
    os.mkfifo(paths["pipe"])
    return paths


CASES = {
    predict.main: {
        "no image matches": (["{root}/none*.jpg", "--cfg", TINY_CFG], ("none*.jpg",)),
        "missing config": (["{images}", "--random-weights", "--cfg", "/no/cfg.yaml"], ("/no/cfg.yaml",)),
        "bad config key": (["{images}", "--random-weights", "--cfg", "{bad_cfg}"], ("TRAIN.EPOCS",)),
        "truncated checkpoint": (["{images}", "--cfg", TINY_CFG, "--resume", "{cut}"], ("cut.pth cannot be read",)),
        "text checkpoint": (["{images}", "--cfg", TINY_CFG, "--resume", "{notes}"], ("notes.txt",)),
        "non-finite weights": (["{images}", "--cfg", TINY_CFG, "--resume", "{nan}"], ("non-finite", "head.weight")),
        "topk zero": (["{images}", "--cfg", TINY_CFG, "--topk", "0"], ("--topk",)),
        "batch size text": (["{images}", "--cfg", TINY_CFG, "--batch-size", "x"], ("--batch-size",)),
        "device not a choice": (["{images}", "--cfg", TINY_CFG, "--device", "tpu"], ("--device",)),
        "output in a missing folder": (["{images}", "--cfg", TINY_CFG, "--output", "/no/such/dir/p.json"],
                                       ("/no/such/dir/p.json",)),
        "undecodable image": (["{bad_image}", "--cfg", TINY_CFG, "--random-weights"], ("bad.png cannot be decoded",)),
        "undecodable image after good ones": (["{images}", "{bad_image}", "--cfg", TINY_CFG, "--random-weights",
                                               "--batch-size", "1"], ("bad.png cannot be decoded",)),
        "output is a folder": (["{images}", "--cfg", TINY_CFG, "--random-weights", "--output", "{out}"],
                               ("is a folder",)),
        "output onto the checkpoint": (["{images}", "--cfg", TINY_CFG, "--resume", "{ckpt}", "--output", "{ckpt}"],
                                       ("tiny.pth: it is an input",)),
        "output onto an input image": (["{images}", "--cfg", TINY_CFG, "--random-weights", "--output",
                                        "{images}/train/a/0.png"], ("0.png: it is an input",)),
        "no weights": (["{images}", "--cfg", TINY_CFG], ("needs weights", "--random-weights")),
        "weights and random": (["{images}", "--resume", "{ckpt}", "--random-weights"], ("contradict",)),
        "checkpoint without config, no --cfg": (["{images}", "--resume", "{ckpt}"], ("carries no config", "--cfg")),
        "zoo name typo": (["{images}", "--resume", "swin_tiny_patch4_window7_244"],
                          ("did you mean swin_tiny_patch4_window7_224",)),
        "no cfg, no weights": (["{images}", "--random-weights"], ("no model", "--cfg")),
        "misspelt flag": (["{images}", "--cfg", TINY_CFG, "--top-k", "3"], ("--top-k",)),
        "opts twice": (["{images}", "--cfg", TINY_CFG, "--opts", "A", "1", "--opts", "B", "2"], ("--opts is given",)),
        "odd opts": (["{images}", "--random-weights", "--cfg", TINY_CFG, "--opts", "DATA.IMG_SIZE"],
                     ("DATA.IMG_SIZE has no value",)),
        "no inputs": (["--cfg", TINY_CFG], ("inputs",)),
        "output onto the config of the run it predicts with": (["{images}", "--resume", "{trained}/best.pth",
                                                                "--output", "{trained}/config.yaml"],
                                                               ("config.yaml: it is a record of the training run",)),
        "output onto a run's log": (["{images}", "--cfg", TINY_CFG, "--random-weights", "--output",
                                     "{trained}/log_rank0.txt"], ("log_rank0.txt: it is a record",)),
        "output onto another run's training checkpoint": (["{images}", "--cfg", TINY_CFG, "--output", "{training}"],
                                                          ("ckpt_epoch_3.pth: it is a training checkpoint",)),
        "a folder with a FIFO named as an image": (["{fifo_folder}", "--cfg", TINY_CFG],
                                                   ("waits.jpg is not a regular file",)),
        "output onto a FIFO": (["{images}", "--cfg", TINY_CFG, "--random-weights", "--output", "{pipe}"],
                               ("pipe.png: it is not a regular file",)),
        "class names of the wrong kind": (["{images}", "--cfg", TINY_CFG, "--resume", "{names_number}"],
                                          ("names_number.pth has a malformed class_names entry",)),
        "a TorchScript program as weights": (["{images}", "--cfg", TINY_CFG, "--resume", "{scripted}"],
                                             ("scripted.pt is a TorchScript program",)),
        "SimMIM pre-training": (["{images}", "--resume", "{simmim}"], ("simmim.pth is SimMIM pre-training",
                                                                        "tools.reconstruct")),
        "SimMIM pre-training with a classifier's --cfg": (["{images}", "--cfg", TINY_CFG, "--resume", "{simmim}"],
                                                          ("is SimMIM pre-training", "--pretrained")),
    },
    reconstruct.main: {
        "a classifier": (["{images}", "--resume", "{classifier}", "--output", "{out}/r.png"],
                         ("classifier.pth is a classifier", "MODEL.SIMMIM.PRETRAIN")),
        "output not a PNG": (["{images}", "--resume", "{simmim}", "--output", "{out}/r.jpg"], ("r.jpg", ".png")),
        "output onto a FIFO": (["{images}", "--resume", "{simmim}", "--output", "{pipe}"],
                               ("pipe.png: it is not a regular file",)),
        "output in a missing folder": (["{images}", "--resume", "{simmim}", "--output", "/no/such/r.png"],
                                       ("/no/such",)),
        "no image matches": (["{root}/none*.jpg", "--resume", "{simmim}", "--output", "{out}/r.png"],
                             ("none*.jpg",)),
        "undecodable image": (["{bad_image}", "--resume", "{simmim}", "--output", "{out}/r.png"],
                              ("bad.png cannot be decoded",)),
        "truncated checkpoint": (["{images}", "--resume", "{cut}", "--output", "{out}/r.png"],
                                 ("cut.pth cannot be read",)),
        "no output": (["{images}", "--resume", "{simmim}"], ("--output",)),
        "output onto an input image": (["{images}", "--resume", "{simmim}", "--output", "{images}/train/a/0.png"],
                                       ("0.png: it is an input",)),
        "count zero": (["{images}", "--resume", "{simmim}", "--output", "{out}/r.png", "--count", "0"],
                       ("--count",)),
        "seed beyond 32 bits": (["{images}", "--resume", "{simmim}", "--output", "{out}/r.png", "--seed",
                                 str(2**64)], ("--seed", "4294967295")),
        "negative seed": (["{images}", "--resume", "{simmim}", "--output", "{out}/r.png", "--seed", "-1"],
                          ("--seed", "-1 is not a seed")),
    },
    summary.main: {
        "missing config": (["--cfg", "/no/cfg.yaml"], ("/no/cfg.yaml",)),
        "unknown key": (["--cfg", TINY_CFG, "--opts", "MODEL.SWIN.EMBED", "8"], ("MODEL.SWIN.EMBED",)),
        "value out of range": (["--cfg", TINY_CFG, "--opts", "MODEL.SWIN.EMBED_DIM", "0"], ("EMBED_DIM",)),
        "config is a folder": (["--cfg", "{root}"], ("is a folder",)),
        "unknown flag": (["--cfg", TINY_CFG, "--verbose"], ("--verbose",)),
        "no config": ([], ("--cfg",)),
        "stored config missing": (["--resume", "{ckpt}"], ("carries no config",)),
        "zoo name with no config": (["--resume", "swin_large_patch4_window12_384_22k"], ("publishes no config",)),
    },
    plot_metrics.main: {
        "missing run": (["/no/run"], ("/no/run",)),
        "garbage metrics": (["{garbage_run}"], ("line 1",)),
        "empty metrics": (["{empty_run}"], ("no epochs",)),
        "output in a missing folder": (["{run}", "--output", "/no/such/dir/c.png"], ("/no/such/dir",)),
        "unknown flag": (["{run}", "--dpi", "3"], ("--dpi",)),
        "output onto a FIFO": (["{run}", "--output", "{pipe}"], ("pipe.png: it is not a regular file",)),
        "two runs": (["{run}", "{run}"], ("unrecognized arguments",)),
        "record without a figure": (["{train_only}"], ("has no lr",)),
        "a validation figure missing in one epoch": (["{val_gap}"], ("epoch 1 has no val_loss",)),
        "an epoch that is not a number": (["{odd_epochs}"], ("line 2", "whole epoch number")),
        "a figure that is null": (["{null_top1}"], ("epoch 0 has null for val_top1, not a number",)),
        "metrics not UTF-8": (["{not_utf8}"], ("not UTF-8",)),
        "output of a format matplotlib lacks": (["{run}", "--output", "{out}/c.xyz"], ("c.xyz", ".xyz files")),
        "output onto the metrics file": (["{run}", "--output", "{run}/metrics.jsonl"], (".jsonl files",)),
        "output is a folder": (["{run}", "--output", "{out}"], ("is a folder",)),
        "output onto a run's confusion plot, .png added": (["{run}", "--output", "{trained}/val_confusion"],
                                                           ("val_confusion.png: it is a record",)),
    },
    convert.main: {
        "missing input": (["--to", "timm", "/no/in.pth", "{out}/out.pth"], ("/no/in.pth",)),
        "text input": (["--to", "timm", "{notes}", "{out}/out.pth"], ("notes.txt",)),
        "wrong layout": (["--from", "timm", "{ckpt}", "{out}/out.pth"], ("reference layout, not the timm one", "--to")),
        "output in a missing folder": (["--to", "timm", "{ckpt}", "/no/such/dir/out.pth"], ("/no/such/dir",)),
        "output is a folder": (["--to", "timm", "{ckpt}", "{out}"], ("is a folder",)),
        "output onto the input": (["--to", "timm", "{ckpt}", "{ckpt}"], ("tiny.pth: it is an input",)),
        "a vision transformer": (["--to", "timm", "{vit}", "{out}/out.pth"], ("vit.pth is in the unknown layout",
                                                                               "pass a Swin checkpoint")),
        "output onto another run's training checkpoint": (["--to", "timm", "{ckpt}", "{training}"],
                                                          ("it is a training checkpoint",)),
        "no direction": (["{ckpt}", "{out}/out.pth"], ("--to",)),
        "output onto a FIFO": (["--to", "timm", "{ckpt}", "{pipe}"], ("pipe.png: it is not a regular file",)),
        "unknown layout": (["--to", "keras", "{ckpt}", "{out}/out.pth"], ("keras",)),
        "output onto a run's metrics": (["--to", "timm", "{ckpt}", "{trained}/metrics.jsonl"],
                                        ("metrics.jsonl: it is a record",)),
        "output onto a run's earlier config": (["--to", "timm", "{ckpt}", "{trained}/config_until_epoch_2.yaml"],
                                               ("config_until_epoch_2.yaml: it is a record",)),
    },
    export.main: {
        "missing config": (["--cfg", "/no/cfg.yaml", "--output", "{out}/m.onnx"], ("/no/cfg.yaml",)),
        "format not a choice": (["--cfg", TINY_CFG, "--output", "{out}/m.x", "--format", "tflite"], ("tflite",)),
        "output onto a FIFO": (["--cfg", TINY_CFG, "--format", "torchscript", "--output", "{pipe}"],
                               ("pipe.png: it is not a regular file",)),
        "output in a missing folder": (["--cfg", TINY_CFG, "--output", "/no/such/m.onnx"], ("/no/such",)),
        "mismatched checkpoint": (["--cfg", TINY_CFG, "--output", "{out}/m.onnx", "--resume", "{ckpt}", "--opts",
                                   "MODEL.SWIN.EMBED_DIM", "32"], ("does not fit",)),
        "opset zero": (["--cfg", TINY_CFG, "--output", "{out}/m.onnx", "--opset", "0"], ("--opset",)),
        "opset from the future": (["--cfg", TINY_CFG, "--output", "{out}/m.onnx", "--opset", "999"],
                                  ("--opset 999", "at most")),
        "output is a folder": (["--cfg", TINY_CFG, "--output", "{out}", "--format", "torchscript"], ("is a folder",)),
        "truncated checkpoint": (["--cfg", TINY_CFG, "--output", "{out}/m.onnx", "--resume", "{cut}"],
                                 ("cut.pth",)),
        "output onto the checkpoint": (["--cfg", TINY_CFG, "--resume", "{ckpt}", "--format", "torchscript",
                                        "--output", "{ckpt}"], ("tiny.pth: it is an input",)),
        "output onto another run's training checkpoint": (["--cfg", TINY_CFG, "--resume", "{ckpt}", "--format",
                                                           "torchscript", "--output", "{training}"],
                                                          ("ckpt_epoch_3.pth: it is a training checkpoint",)),
        "output onto a run's per-class results": (["--cfg", TINY_CFG, "--format", "torchscript", "--output",
                                                   "{trained}/val_per_class.json"], ("val_per_class.json: it is a",)),
        "an opset the exporter cannot convert to": (["--cfg", TINY_CFG, "--output", "{out}/m.onnx", "--opset", "13"],
                                                    ("--opset 13", "could not convert", "--opset 18")),
    },
    zoo.main: {
        "no name matches": (["--filter", "resnet"], ("resnet",)),
        "unknown flag": (["--list"], ("--list",)),
        "filter without a value": (["--filter"], ("--filter",)),
        "a positional argument": (["swin_tiny"], ("unrecognized arguments",)),
    },
    make_map.main: {
        "missing folder": (["/no/split"], ("/no/split",)),
        "a file": (["{file}"], ("file.txt",)),
        "no class folders": (["{run}"], ("no class sub-folders",)),
        "two folders": (["{root}", "{root}"], ("unrecognized arguments",)),
        "an image name with a tab": (["{tabbed}"], ("has a tab or line break in its name",)),
    },
}
TABLE = {f"{entry.__module__.split('.')[-1]}: {name}": (entry, case) for entry, cases in CASES.items()
         for name, case in cases.items()}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_tool_bad_input_is_one_line_and_changes_nothing(name, files, tmp_path, capsys):
    entry, (argv, fragments) = TABLE[name]
    before = digest(files["root"])
    code, out, err = call(entry, [a.format(out=str(tmp_path), **files) for a in argv], capsys)
    assert_one_error_line(code, out, err, *fragments)
    assert digest(files["root"]) == before and not os.listdir(tmp_path)


def test_every_tool_has_cases():
    assert all(len(cases) >= 4 for cases in CASES.values()) and len(TABLE) >= 40


FULL_DISK_CASES = {
    "predict .json": (predict.main, ["{images}", "--cfg", TINY_CFG, "--random-weights", "--output", "{disk}/p.json"]),
    "predict .csv": (predict.main, ["{images}", "--cfg", TINY_CFG, "--random-weights", "--output", "{disk}/p.csv"]),
    "plot_metrics": (plot_metrics.main, ["{run}", "--output", "{disk}/c.png"]),
    "reconstruct": (reconstruct.main, ["{images}", "--resume", "{simmim}", "--output", "{disk}/r.png"]),
    "convert": (convert.main, ["--to", "timm", "{ckpt}", "{disk}/out.pth"]),
    **{f"export {fmt}": (export.main, ["--cfg", TINY_CFG, "--format", fmt, "--output", f"{{disk}}/m.{fmt}"])
       for fmt in ("onnx", "torchscript", "export")},
}


@pytest.mark.parametrize("name", sorted(FULL_DISK_CASES))
def test_a_tool_writing_onto_a_full_disk_says_so_and_leaves_no_partial_file(name, files, full_disk, capsys):
    entry, argv = FULL_DISK_CASES[name]
    argv = [a.format(disk=full_disk, **files) for a in argv]
    code, out, err = call(entry, argv, capsys)
    assert_one_error_line(code, out, err, "no space left", argv[-1])
    assert os.listdir(full_disk) == ["filler.bin"]


STDOUT_CASES = {
    "zoo": ["-m", "tools.zoo"],
    "summary": ["-m", "tools.summary", "--cfg", TINY_CFG],
    "make_map": ["-m", "data.make_map", "{images}/train"],
    "predict": ["-m", "tools.predict", "{images}", "--cfg", TINY_CFG, "--random-weights", "--compile", "off"],
}
# Every command's --help (argparse alone drops a failed write and exits 0), in this process.
HELP_COMMANDS = {"main.py": main_py.main, "make_map": make_map.main, **{tool.__name__: tool.main for tool in (
    convert, export, plot_metrics, predict, reconstruct, summary, zoo)}}


def _run_tool(argv: list, files: dict, stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *[a.format(**files) for a in argv]], cwd=ROOT, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("name", sorted(STDOUT_CASES))
def test_standard_output_on_a_full_disk_is_one_line_naming_it(name, files):
    with open("/dev/full", "w") as full:
        result = _run_tool(STDOUT_CASES[name], files, full)
    assert_one_error_line(result.returncode, "", result.stderr, "standard output cannot be written",
                          os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("name", sorted(STDOUT_CASES))
def test_a_reader_that_leaves_early_ends_the_tool_quietly(name, files):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already gone
    with os.fdopen(write_end, "w") as pipe:
        result = _run_tool(STDOUT_CASES[name], files, pipe)
    assert result.returncode == 128 + signal.SIGPIPE and result.stderr == "", result.stderr


@pytest.mark.parametrize("name", sorted(HELP_COMMANDS))
def test_help_onto_a_full_disk_is_one_line_naming_standard_output(name, monkeypatch, capsys):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        code, _, err = call(HELP_COMMANDS[name], ["--help"], capsys)
    assert_one_error_line(code, "", err, "standard output cannot be written", os.strerror(errno.ENOSPC))


def test_help_into_a_closed_pipe_ends_quietly(files):
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as pipe:
        result = _run_tool(["main.py", "--help"], files, pipe)
    assert result.returncode == 128 + signal.SIGPIPE and result.stderr == "", result.stderr


@pytest.mark.parametrize("argv", [["main.py", "--cfg", "/no/such.yaml"], ["-m", "tools.zoo", "--filter", "resnet"],
                                  ["-m", "tools.summary", "--cfg", TINY_CFG, "--bogus"]],
                         ids=["main.py, a missing config", "zoo, nothing matches", "summary, an unknown flag"])
def test_a_mistake_told_to_a_full_stderr_keeps_its_exit_code(argv):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=full, timeout=300)
    assert result.returncode == 2
