"""A run's config travels with its checkpoints: predict, export, summary and --eval rebuild the model from it, and
evaluation reads folders that hold only validation images, or some of the classes, with per-class results."""

import json
import os
import shutil

import pytest
import torch
from bad_inputs import call, image_tree, png_bytes
from conftest import TINY_CFG, assert_user_error, digest, run_main

from config import load_config
from models import build_model
from tools import export, plot_metrics, predict, summary

# A model the tiny config does not build by itself: the checkpoint alone must carry these.
OPTS = ("MODEL.NUM_CLASSES", "4", "MODEL.SWIN.EMBED_DIM", "24", "MODEL.SWIN.MLP_RATIO", "2.0", "DATA.BATCH_SIZE", "4")
CLASSES = ("ant", "bee", "cat", "dog")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("travel")
    data = image_tree(str(root / "data"), classes=CLASSES, per_class=8, val_per_class=3)
    result = run_main("--cfg", TINY_CFG, "--data-path", data, "--output", str(root / "out"), "--opts",
                      "DATA.DATASET", "'imagenet'", *OPTS)
    assert result.returncode == 0, result.stderr[-2000:]
    return {"root": root, "data": data, "ckpt": str(root / "out" / "swin_tiny_test" / "default" / "best.pth")}


def eval_line(result) -> str:
    assert result.returncode == 0, result.stderr[-2000:]
    return next(line.split("] ", 1)[1] for line in result.stdout.splitlines() if "eval on" in line)


def test_eval_from_the_checkpoint_alone_equals_eval_with_cfg_and_opts(trained, tmp_path):
    alone = run_main("--eval", "--resume", trained["ckpt"], "--data-path", trained["data"], "--output", str(tmp_path))
    given = run_main("--eval", "--resume", trained["ckpt"], "--data-path", trained["data"], "--output", str(tmp_path),
                     "--cfg", TINY_CFG, "--opts", "DATA.DATASET", "'imagenet'", *OPTS)
    assert eval_line(alone) == eval_line(given) and "on 12 images" in eval_line(alone)
    assert "top-5" not in eval_line(alone)  # four classes: top-5 would always be 100%


def test_predict_export_and_summary_from_the_checkpoint_alone_equal_cfg_and_opts(trained, tmp_path, capsys):
    val = os.path.join(trained["data"], "val")
    with_cfg = ["--cfg", TINY_CFG, "--opts", *OPTS]
    outputs = {}
    for name, extra in (("alone", []), ("cfg", with_cfg)):
        path = str(tmp_path / f"{name}.json")
        assert predict.main([val, "--resume", trained["ckpt"], "--output", path, "--device", "cpu", *extra]) == 0
        outputs[name] = json.load(open(path))
        assert export.main(["--resume", trained["ckpt"], "--format", "torchscript", "--output",
                            str(tmp_path / f"{name}.pt"), *extra]) == 0
        capsys.readouterr()
        assert summary.main(["--resume", trained["ckpt"], *extra]) == 0
        outputs[name + " summary"] = capsys.readouterr().out
    assert outputs["alone"] == outputs["cfg"]
    assert {e["name"] for row in outputs["alone"] for e in row["top"]} <= set(CLASSES)
    assert outputs["alone summary"] == outputs["cfg summary"] and "24" in outputs["alone summary"]
    images = torch.randn(2, 3, 32, 32)
    first, second = (torch.jit.load(str(tmp_path / f"{n}.pt"))(images) for n in ("alone", "cfg"))
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_writes_one_file_and_lists_it(fmt, trained, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")
    name = f"m.{fmt}"
    assert export.main(["--resume", trained["ckpt"], "--format", fmt, "--output", str(tmp_path / name)]) == 0
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert os.listdir(tmp_path) == [name] and wrote == [f"wrote {tmp_path / name} "
                                                        f"({os.path.getsize(tmp_path / name) / 2**20:.1f} MB)"]


def test_eval_reads_a_val_only_folder_a_class_tree_and_a_subset_of_classes(trained, tmp_path):
    only_val = tmp_path / "only_val"
    shutil.copytree(os.path.join(trained["data"], "val"), only_val / "val")
    tree = tmp_path / "tree"
    shutil.copytree(os.path.join(trained["data"], "val"), tree)
    subset = tmp_path / "subset"
    shutil.copytree(os.path.join(trained["data"], "val"), subset)
    shutil.rmtree(subset / "ant")
    shutil.rmtree(subset / "cat")
    lines = {}
    for name, folder in (("only_val", only_val), ("tree", tree), ("subset", subset)):
        out = tmp_path / f"out_{name}"
        lines[name] = eval_line(run_main("--eval", "--resume", trained["ckpt"], "--data-path", str(folder),
                                         "--output", str(out)))
        report = json.load(open(out / "swin_tiny_test" / "default" / "eval_per_class.json"))
        lines[name + " classes"] = report["classes"]
        assert [c["name"] for c in report["classes"]] == list(CLASSES)
        assert os.path.isfile(out / "swin_tiny_test" / "default" / "eval_confusion.png")
    assert lines["only_val"] == lines["tree"] and "on 12 images" in lines["tree"]
    full = {c["name"]: c for c in lines["tree classes"]}
    matrix_rows = json.load(open(tmp_path / "out_tree" / "swin_tiny_test" / "default" / "eval_per_class.json"))
    assert [sum(row) for row in matrix_rows["confusion"]] == [3, 3, 3, 3]
    # The subset is labelled as the model numbers its classes: its per-class figures are the full set's.
    for entry in lines["subset classes"]:
        expected = full[entry["name"]] if entry["name"] in ("bee", "dog") else {**entry, "images": 0, "top1": None}
        assert (entry["images"], entry["top1"]) == (expected["images"], expected["top1"]), entry
    subset_top1 = float(lines["subset"].split("top-1 ")[1].split("%")[0])
    assert subset_top1 == pytest.approx((full["bee"]["top1"] + full["dog"]["top1"]) / 2, abs=0.01)


def test_training_ends_with_the_best_epoch_and_per_class_results(trained):
    run = trained["root"] / "out" / "swin_tiny_test" / "default"
    log = open(run / "log_rank0.txt").read()
    assert "best val top-1" in log and f"weights {run / 'best.pth'}" in log and "over all runs" in log
    report = json.load(open(run / "val_per_class.json"))
    assert [c["images"] for c in report["classes"]] == [3, 3, 3, 3]
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert all("val_top5" not in r and r["run"] == 0 for r in records)


def test_plot_marks_best_epoch_resumes_and_per_step_lr(trained, tmp_path, capsys):
    run = trained["root"] / "out" / "swin_tiny_test" / "default"
    code, out, _ = call(plot_metrics.main, [str(run), "--output", str(tmp_path / "c.png")], capsys)
    assert code == 0 and "lr per step" in out and "0 resumes" in out
    steps = plot_metrics.step_lrs(str(run))
    assert len(steps) == 2 * 8 and steps[0][1] < steps[7][1]  # 2 epochs of 8 steps; the warm-up rises
    records = [{"epoch": e, "run": r, "val_top1": t} for e, r, t in ((0, 0, 10), (1, 0, 30), (2, 1, 30), (3, 2, 20))]
    assert plot_metrics.resumed_epochs(records) == [2, 3]


def test_errors_reach_the_run_log(trained, tmp_path):
    result = run_main("--eval", "--resume", trained["ckpt"], "--data-path", str(tmp_path / "missing"), "--output",
                      str(tmp_path))
    assert result.returncode == 2
    log = open(tmp_path / "swin_tiny_test" / "default" / "log_rank0.txt").read()
    assert "error: data path" in log and str(tmp_path / "missing") in log


def test_fine_tuning_from_a_run_of_ours_needs_no_cfg_and_leaves_that_run_alone(trained, tmp_path):
    source_run = trained["root"] / "out" / "swin_tiny_test" / "default"
    before = digest(str(source_run))
    other = image_tree(str(tmp_path / "other"), classes=("x", "y"), per_class=8, val_per_class=2)
    result = run_main("--pretrained", trained["ckpt"], "--data-path", other, "--output", str(trained["root"] / "out"),
                      "--opts", "TRAIN.LAYER_DECAY", "0.8", "TRAIN.FREEZE_STAGES", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    run = trained["root"] / "out" / "swin_tiny_test" / "finetune"
    assert os.path.isfile(run / "best.pth") and digest(str(source_run)) == before
    assert "the data has class 'x', which the checkpoint's 4 classes do not include; the head starts from scratch" \
        in result.stdout
    assert "frozen: patch embedding and stages 0-0" in result.stdout
    assert "layer decay 0.8: 3 layers trained at lr x0.64 (the first) to x1 (the head)" in result.stdout


def test_eval_with_pretrained_weights_answers_in_the_datas_class_order(tmp_path):
    """A checkpoint whose classes are named in another order than the folder's sorted ones: --eval --pretrained
    maps its head by name, as --eval --resume labels the data by the checkpoint's names; a head that cannot answer
    for the data's classes is refused, never evaluated at random."""
    for name, count in (("a", 3), ("b", 1), ("c", 1)):
        os.makedirs(tmp_path / "data" / "val" / name)
        for i in range(count):
            (tmp_path / "data" / "val" / name / f"{i}.png").write_bytes(png_bytes(colour=(60 * i, 90, 30)))
    model = build_model(load_config(TINY_CFG, ("MODEL.NUM_CLASSES", "3")))
    state = model.state_dict()
    state["head.weight"].zero_()
    state["head.bias"].copy_(torch.tensor([0.0, 0.0, 10.0]))  # always the checkpoint's class 2, which it calls "a"
    torch.save({"model": state, "class_names": ["c", "b", "a"]}, tmp_path / "named.pth")
    common = ("--cfg", TINY_CFG, "--eval", "--data-path", str(tmp_path / "data"), "--output", str(tmp_path / "out"),
              "--opts", "DATA.DATASET", "imagenet")
    lines = [eval_line(run_main(*common[:2], flag, str(tmp_path / "named.pth"), *common[2:]))
             for flag in ("--resume", "--pretrained")]
    assert lines[0] == lines[1] and "top-1 60.000%" in lines[0], lines
    torch.save({"model": state, "class_names": ["c", "b", "x"]}, tmp_path / "other.pth")
    refused = run_main(*common[:2], "--pretrained", str(tmp_path / "other.pth"), *common[2:])
    assert_user_error(refused, "--eval --pretrained", "other.pth", "start from scratch")
