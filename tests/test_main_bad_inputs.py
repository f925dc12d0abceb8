"""Every mistake through main.py is one `error:` line, exit code 2, no traceback, and a finished run's folder
byte-identical afterwards: config files, values, command lines, output locations, data, checkpoints.

The table runs main.main() in this process (a few cases also as a real process and under torchrun), pointed at the
suite's shared finished run with that run's own settings, so each case meets its own mistake. The values each config
key refuses go through load_config instead: test_configuration_checks.py.
"""

import os
import shutil
import subprocess
import sys
import types
import warnings
import zipfile

import pytest
import torch
from bad_inputs import (
    assert_one_error_line,
    call,
    corrupt_member_crc,
    image_tree,
    patch_member_entry,
    png_header_only,
    zip_tree,
)
from conftest import (
    PAPER_RECIPE,
    ROOT,
    SIMMIM,
    TINY_CFG,
    assert_torchrun_user_error,
    assert_user_error,
    digest,
    run_dir,
    run_main,
    torchrun_main,
)

import main as main_module
from config import load_config
from models import build_model

DIGITS = ("DATA.DATASET", "digits", "TRAIN.EPOCHS", "2", "PRINT_FREQ", "1000")


# The settings of the shared finished run, so that each case meets its own mistake, not a change of settings.
FINISHED = (*PAPER_RECIPE, "DATA.NUM_WORKERS", "0")
FOLDERS = ("DATA.DATASET", "'imagenet'", "DATA.BATCH_SIZE", "4", "MODEL.NUM_CLASSES", "2")


@pytest.fixture(scope="module")
def files(tmp_path_factory, finished_run):
    """Bad files of every kind, made once."""
    root = tmp_path_factory.mktemp("bad_files")
    paths = {}

    def write(name: str, data: bytes | str) -> str:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        paths[name.split(".")[0].split("/")[-1]] = str(path)
        return str(path)

    checkpoint = os.path.join(run_dir(finished_run), "ckpt_epoch_1.pth")
    write("binary.yaml", bytes(range(256)) * 4)
    write("utf16.yaml", "DATA:\n  BATCH_SIZE: 4\n".encode("utf-16"))
    write("base_string.yaml", "BASE: tiny.yaml\n")
    write("duplicate.yaml", f"BASE: ['{TINY_CFG}']\nDATA:\n  BATCH_SIZE: 4\n  BATCH_SIZE: 8\n")
    write("top_list.yaml", "- DATA\n- MODEL\n")
    write("unknown_key.yaml", "TRAIN:\n  EPOCS: 3\n")
    write("group_scalar.yaml", "DATA: 3\n")
    write("loop.yaml", "BASE: ['loop.yaml']\n")
    write("missing_base.yaml", "BASE: ['nowhere.yaml']\n")
    write("wrong_type.yaml", "TRAIN:\n  EPOCHS: many\n")
    write("nan_lr.yaml", f"BASE: ['{TINY_CFG}']\nTRAIN:\n  BASE_LR: .nan\n")
    write("inf_lr.yaml", f"BASE: ['{TINY_CFG}']\nTRAIN:\n  MIN_LR: .inf\n")
    write("bad_syntax.yaml", "DATA: [1, 2\n")
    write("unquoted_no.yaml", f"BASE: ['{TINY_CFG}']\nDATA:\n  CACHE_MODE: no\n")
    write("list_key.yaml", "TRAIN:\n  [1, 2]: 3\n")
    write("dict_key.yaml", "? {a: 1}\n: 3\n")
    write("number_key.yaml", "TRAIN:\n  3: 4\n")
    write("huge_int.yaml", f"BASE: ['{TINY_CFG}']\nTRAIN:\n  MIN_LR: {10 ** 400}\n")
    write("nul_tag.yaml", f"BASE: ['{TINY_CFG}']\nTAG: \"a\\0b\"\n")

    write("notes.txt", "not a checkpoint\n")
    with open(checkpoint, "rb") as f:
        whole = f.read()
    write("cut.pth", whole[:5000])
    write("empty.pth", b"")
    paths["checkpoint_as_cfg"] = checkpoint
    paths["list_ckpt"] = str(root / "list.pth")
    torch.save([1, 2, 3], paths["list_ckpt"])
    payload = torch.load(checkpoint, weights_only=True)
    payload["model"]["layers.0.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    paths["nan_ckpt"] = str(root / "nan.pth")
    torch.save(payload, paths["nan_ckpt"])
    paths["bare"] = str(root / "bare.pth")
    torch.save({"model": torch.load(checkpoint, weights_only=True)["model"]}, paths["bare"])
    paths["no_model"] = str(root / "no_model.pth")
    torch.save({"epoch": 3, "notes": "no weights"}, paths["no_model"])
    pretraining = load_config(TINY_CFG, SIMMIM)
    paths["simmim"] = str(root / "simmim.pth")
    torch.save({"model": build_model(pretraining).state_dict(), "config": pretraining.dump()}, paths["simmim"])
    state = torch.load(checkpoint, weights_only=True)
    gone = types.ModuleType("swin_test_gone")  # a module of someone else's code, present only while saving

    class Gone:
        pass

    Gone.__module__, Gone.__qualname__, gone.Gone = "swin_test_gone", "Gone", Gone
    sys.modules["swin_test_gone"] = gone
    try:
        paths["foreign"] = str(root / "foreign.pth")
        torch.save({**state, "extra": Gone()}, paths["foreign"])
    finally:
        del sys.modules["swin_test_gone"]
    paths["runs_code"] = str(root / "runs_code.pth")
    torch.save({**state, "hook": _WritesAFile(str(root / "ran"))}, paths["runs_code"])
    paths["int_key"] = str(root / "int_key.pth")
    torch.save({**state, "model": {**state["model"], 3: torch.zeros(1)}}, paths["int_key"])
    paths["bad_progress"] = str(root / "bad_progress.pth")
    torch.save({**state, "resume_at": ("one", 0)}, paths["bad_progress"])
    for name, rng in (("rng_text", "garbage"), ("rng_numbers", [1]), ("rng_values", [{"python": 1, "numpy": 2,
                                                                                    "torch": 3}])):
        paths[name] = str(root / f"{name}.pth")
        torch.save({**state, "rng": rng}, paths[name])
    for name, (_, value, _) in MALFORMED_ENTRIES.items():
        paths[name] = str(root / f"{name}.pth")
        entry = MALFORMED_ENTRIES[name][0]
        torch.save({**state, entry: value}, paths[name])
    for name, (_, value) in ODD_WEIGHTS.items():
        paths[name] = str(root / f"{name}.pth")
        torch.save({**state, "model": {**state["model"], "head.bias": value}}, paths[name])
    moments = state["optimizer"]["state"]
    shifted = {k: moments[(k + 1) % len(moments)] for k in moments}  # every moment moved to its neighbour
    paths["shifted_moments"] = str(root / "shifted_moments.pth")
    torch.save({**state, "optimizer": {**state["optimizer"], "state": shifted}}, paths["shifted_moments"])
    nan_moments = {k: {**v, "exp_avg": torch.full_like(v["exp_avg"], float("nan"))} for k, v in moments.items()}
    paths["nan_moments"] = str(root / "nan_moments.pth")
    torch.save({**state, "optimizer": {**state["optimizer"], "state": nan_moments}}, paths["nan_moments"])
    reference_style = {k: v for k, v in state.items() if k != "optimizer_param_names"}  # matched by position
    paths["groups_odd"] = str(root / "groups_odd.pth")
    torch.save({**reference_style, "optimizer": {**state["optimizer"], "param_groups": [{"params": 7}]}},
               paths["groups_odd"])
    paths["past_epoch"] = str(root / "past_epoch.pth")
    torch.save({**state, "resume_at": [2, 999]}, paths["past_epoch"])
    paths["scripted"] = str(root / "scripted.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notes
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), paths["scripted"])
    table = "layers.0.blocks.0.attn.relative_position_bias_table"
    for name, changed in (("odd_table", {table: torch.zeros(10, 3)}), ("flat_table", {table: torch.zeros(49)}),
                          ("empty_table", {table: torch.zeros(0, 2)}),
                          ("head_without_bias", {"head.weight": torch.zeros(7, 32)})):
        paths[name] = str(root / f"{name}.pth")
        weights = {k: v for k, v in state["model"].items() if k != "head.bias" or name != "head_without_bias"}
        torch.save({"model": {**weights, **changed}}, paths[name])
    paths["epoch_0"] = os.path.join(run_dir(finished_run), "ckpt_epoch_0.pth")
    paths["folder"] = str(root)
    paths["long"] = str(root / ("x" * 300))
    return paths


# Checkpoint entries of the wrong kind: name -> (entry, value, flags before the path).
MALFORMED_ENTRIES = {
    "names_number": ("class_names", 5, ("--resume",)),
    "names_numbers": ("class_names", [1, 2], ("--eval", "--resume")),
    "history_dict": ("metrics_history", {"epoch": 0}, ("--resume",)),
    "history_numbers": ("metrics_history", [1, 2], ("--resume",)),
    "history_text": ("metrics_history", [{"epoch": 0, "train_loss": "low"}], ("--resume",)),
    "param_names_number": ("optimizer_param_names", 5, ("--resume",)),
    "optimizer_list": ("optimizer", [1, 2], ("--resume",)),
    "moments_by_name": ("optimizer", {"state": {"head.bias": {}}, "param_groups": []}, ("--resume",)),
    "negative_epoch": ("resume_at", [-3, 0], ("--resume",)),
    "position_of_three": ("resume_at", [1, 2, 3], ("--resume",)),
    "accuracy_text": ("max_accuracy", "high", ("--resume",)),
    "accuracy_nan": ("max_accuracy", float("nan"), ("--resume",)),
    "totals_list": ("epoch_totals", [1.0], ("--resume",)),
    "scaler_text_scale": ("scaler", {"scale": "big"}, ("--resume",)),
    "scaler_zero_scale": ("scaler", {"scale": 0.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 0}, ("--resume",)),
    "world_size_text": ("world_size", "two", ("--resume",)),
    "config_number": ("config", 7, ("--resume",)),
    "ema_list": ("model_ema", [1], ("--resume",)),
}
# Weights that are not dense real tensors: name -> (what the error calls it, the value put in head.bias).
ODD_WEIGHTS = {
    "weight_list": ("list, not a tensor", [0.0, 0.0]),
    "weight_sparse": ("sparse_coo tensor", torch.zeros(2).to_sparse()),
    "weight_meta": ("tensor without data", torch.empty(2, device="meta")),
    "weight_complex": ("complex64 tensor", torch.zeros(2, dtype=torch.complex64)),
}


class _WritesAFile:
    """Pickles as a call to open(): unpickling it would create `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def t(*argv: str, opts: tuple = ()) -> tuple:
    """A command line with the tiny config; `opts` are added after the digits run's own."""
    return ("--cfg", TINY_CFG, *argv), opts


CONFIG_FILE_CASES = {
    "binary file": ((("--cfg", "{binary}"), ()), ("binary.yaml", "UTF-8")),
    "utf-16 file": ((("--cfg", "{utf16}"), ()), ("utf16.yaml", "UTF-8")),
    "checkpoint as config": ((("--cfg", "{checkpoint_as_cfg}"), ()), ("ckpt_epoch_1.pth",)),
    "BASE as a string": ((("--cfg", "{base_string}"), ()), ("BASE", "list")),
    "duplicated key": ((("--cfg", "{duplicate}"), ()), ("BATCH_SIZE twice", "line 4")),
    "list at top level": ((("--cfg", "{top_list}"), ()), ("KEY: VALUE",)),
    "unknown key in file": ((("--cfg", "{unknown_key}"), ()), ("TRAIN.EPOCS", "did you mean TRAIN.EPOCHS")),
    "group given a value": ((("--cfg", "{group_scalar}"), ()), ("DATA", "group")),
    "BASE loop": ((("--cfg", "{loop}"), ()), ("includes itself",)),
    "missing BASE file": ((("--cfg", "{missing_base}"), ()), ("nowhere.yaml", "does not exist")),
    "wrong type in file": ((("--cfg", "{wrong_type}"), ()), ("TRAIN.EPOCHS", "int")),
    "NaN learning rate": ((("--cfg", "{nan_lr}"), ()), ("TRAIN.BASE_LR", "finite")),
    "infinite learning rate": ((("--cfg", "{inf_lr}"), ()), ("TRAIN.MIN_LR", "finite")),
    "YAML syntax": ((("--cfg", "{bad_syntax}"), ()), ("bad_syntax.yaml", "line")),
    "config is a folder": ((("--cfg", "{folder}"), ()), ("is a folder",)),
    "missing config": ((("--cfg", "/no/such.yaml"), ()), ("/no/such.yaml", "does not exist")),
    "a word YAML reads as a boolean": ((("--cfg", "{unquoted_no}"), ()), ("DATA.CACHE_MODE", "quote the word")),
    "a list as a key": ((("--cfg", "{list_key}"), ()), ("list_key.yaml line 2", "not a config key name")),
    "a mapping as a key": ((("--cfg", "{dict_key}"), ()), ("dict_key.yaml line 1", "not a config key name")),
    "a number as a key": ((("--cfg", "{number_key}"), ()), ("number_key.yaml line 2", "has the key 3")),
    "an integer past any float": ((("--cfg", "{huge_int}"), ()), ("TRAIN.MIN_LR", "beyond any float")),
    "a NUL in the tag": ((("--cfg", "{nul_tag}"), ()), ("config key TAG", "control characters")),
    "a value nested past the parser": (t(opts=("MODEL.SWIN.DEPTHS", "[" * 5000 + "]" * 5000)),
                                       ("MODEL.SWIN.DEPTHS",)),
}
VALUE_CASES = {
    "a tag that climbs out of the output folder": (t("--tag", "../../x"), ("TAG is '../../x'", "plain name")),
    "accumulation longer than an epoch": (t(opts=("TRAIN.ACCUMULATION_STEPS", "500")),
                                          ("TRAIN.ACCUMULATION_STEPS 500", "batches")),
    "more classes than the data": (t(opts=("MODEL.NUM_CLASSES", "7")), ("MODEL.NUM_CLASSES is 7",)),
    "no classes": (t("--num-classes", "0"), ("MODEL.NUM_CLASSES is 0", "without a classifier")),
    "no classes of synthetic images": (t("--num-classes", "0", opts=("DATA.DATASET", "fake")),
                                       ("MODEL.NUM_CLASSES is 0",)),
    "SimMIM config evaluated": (t("--eval", "--resume", "{simmim}", opts=SIMMIM), ("measure a classifier",)),
}
COMMAND_LINE_CASES = {
    "eval with throughput": (t("--eval", "--throughput"), ("--eval and --throughput",)),
    "opts twice": ((("--cfg", TINY_CFG, "--opts", "TRAIN.EPOCHS", "3", "--opts", "DATA.BATCH_SIZE", "4"), ()),
                   ("--opts is given", "give it once")),
    "a key without its value": (t(opts=("TRAIN.EPOCHS", "DATA.BATCH_SIZE", "4")),
                                ("TRAIN.EPOCHS has no value", "DATA.BATCH_SIZE follows")),
    "last key without value": (t(opts=("TRAIN.EPOCHS",)), ("TRAIN.EPOCHS has no value",)),
    "opts as KEY=VALUE": (t(opts=("TRAIN.EPOCHS=1",)), ("not TRAIN.EPOCHS=1", "--opts TRAIN.EPOCHS 1")),
    "opts as KEY=VALUE among pairs": (t(opts=("DATA.BATCH_SIZE", "4", "TRAIN.EPOCHS=1", "TRAIN.WARMUP_EPOCHS", "0")),
                                      ("not TRAIN.EPOCHS=1",)),
    "opts as an unknown KEY=VALUE": (t(opts=("TRAIN.EPOCS=1",)), ("not TRAIN.EPOCS=1", "--opts TRAIN.EPOCS 1")),
    "cfg twice": ((("--cfg", TINY_CFG, "--cfg", TINY_CFG), ()), ("--cfg is given 2 times",)),
    "misspelt flag": (t("--batch_sise", "4"), ("--batch_sise", "did you mean --batch-size")),
    "flag value not a number": (t("--batch-size", "many"), ("--batch-size", "invalid int")),
    "negative batch size": (t("--batch-size", "-4"), ("DATA.BATCH_SIZE is -4",)),
    "cache mode not a choice": (t("--cache-mode", "some"), ("--cache-mode",)),
    "device not a choice": (t("--device", "tpu"), ("--device",)),
    "missing cfg": (((), ()), ("--cfg",)),
    "flag without value": (t("--data-path"), ("--data-path",)),
    "eval without weights": (t("--eval"), ("--eval needs weights",)),
    "a data path the dataset would not read": (t("--data-path", "{folder}"),
                                               ("would not be read", "DATA.DATASET is 'digits'")),
    "timm's --lr": (t("--lr", "1e-3"), ("--lr", "--opts TRAIN.BASE_LR 1e-3", "per 512 images")),
    "timm's --epochs=N": (t("--epochs=5"), ("--opts TRAIN.EPOCHS 5",)),
    "timm's -b": (t("-b", "4"), ("here it is --batch-size 4",)),
    "timm's --model with a zoo name": (t("--model", "swin_tiny_patch4_window7_224", "--eval"),
                                       ("here it is --pretrained swin_tiny_patch4_window7_224", "tools.zoo")),
    "timm's --input-size C H W": (t("--input-size", "3", "224", "224"), ("--opts DATA.IMG_SIZE 224",)),
    "timm's --input-size=": (t("--input-size=192"), ("--opts DATA.IMG_SIZE 192",)),
    "timm's --lr before another timm flag": (t("--lr", "1e-3", "-j", "4"), ("--opts TRAIN.BASE_LR 1e-3,",)),
    "timm's --drop-path": (t("--drop-path", "0.1"), ("--opts MODEL.DROP_PATH_RATE 0.1",)),
    "the reference SimMIM scripts' --enable-amp": (t("--enable-amp"), ("--enable-amp", "AMP is on by default")),
    "no cfg and weights without a config": ((("--pretrained", "{bare}"), ()), ("bare.pth carries no config", "--cfg")),
    "no cfg and no weights": ((("--eval",), ()), ("no config", "--cfg")),
    "zoo name of another architecture": (t("--pretrained", "swin_tiny_patch4_window7_224"),
                                         ("configs/swin/swin_tiny_patch4_window7_224.yaml", "EMBED_DIM 16 vs 96")),
    "zoo name misspelt": (t("--pretrained", "swin_tiny_patch4_window7_244"),
                          ("did you mean swin_tiny_patch4_window7_224", "tools.zoo")),
    "zoo name without a config": ((("--pretrained", "swin_large_patch4_window12_384_22k"), ()),
                                  ("publishes no config", "--cfg")),
    "eval of a zoo name at another resolution": (
        (("--cfg", os.path.join(ROOT, "configs", "swin", "swin_base_patch4_window7_224.yaml"), "--eval", "--resume",
          "swin_base_patch4_window12_384"), ("TRAIN.WARMUP_EPOCHS", "0")),
        ("swin_base_patch4_window12_384_finetune.yaml", "DATA.IMG_SIZE")),
}
CHECKPOINT_CASES = {
    "text file": (t("--resume", "{notes}"), ("notes.txt cannot be read",)),
    "truncated": (t("--resume", "{cut}"), ("cut.pth cannot be read",)),
    "empty file": (t("--resume", "{empty}"), ("empty.pth",)),
    "missing": (t("--resume", "/no/such.pth"), ("/no/such.pth does not exist",)),
    "a folder": (t("--resume", "{folder}"), ("is a folder",)),
    "a list, not a dict": (t("--resume", "{list_ckpt}"), ("list.pth holds a list",)),
    "no model weights": (t("--resume", "{no_model}"), ("no_model.pth holds no model weights",)),
    "NaN weights": (t("--resume", "{nan_ckpt}"), ("non-finite values in layers.0.blocks.0.mlp.fc1.weight",)),
    "NaN weights to evaluate": (t("--eval", "--resume", "{nan_ckpt}"), ("non-finite values",)),
    "another model": (t("--resume", "{checkpoint_as_cfg}", opts=("MODEL.SWIN.EMBED_DIM", "32")),
                      ("does not fit this model", "--pretrained")),
    "pretrained missing": (t("--tag", "fresh", "--pretrained", "/no/weights.pth"), ("/no/weights.pth does not exist",)),
    "pretrained text": (t("--tag", "fresh", "--pretrained", "{notes}"), ("notes.txt cannot be read",)),
    "pretrained NaN": (t("--tag", "fresh", "--pretrained", "{nan_ckpt}"), ("non-finite values",)),
    **{f"pretrained {what}": (t("--tag", "fresh", "--pretrained", f"{{{name}}}"), (f"{name}.pth does not fit", *frag))
       for what, name, frag in (("bias table no resizing explains", "odd_table", ("(10, 3) vs (49, 2)",)),
                                ("bias table of one axis", "flat_table", ("(49,) vs (49, 2)",)),
                                ("bias table with no rows", "empty_table", ("(0, 2) vs (49, 2)",)),
                                ("head weight without its bias", "head_without_bias",
                                 ("head.weight (7, 32) vs (10, 32)",)))},
    "eval from a truncated file": (t("--eval", "--resume", "{cut}"), ("cut.pth cannot be read",)),
    "would run code when read": (t("--resume", "{runs_code}"), ("runs_code.pth cannot be read", "pickles code")),
    "pretrained that would run code when read": (t("--tag", "fresh", "--pretrained", "{runs_code}"),
                                                 ("runs_code.pth cannot be read",)),
    "pickles a class from elsewhere": (t("--resume", "{foreign}"), ("foreign.pth cannot be read", "swin_test_gone")),
    "eval of one that pickles a class from elsewhere": ((("--eval", "--resume", "{foreign}"), ()),
                                                        ("foreign.pth cannot be read",)),
    "weights under a number": (t("--resume", "{int_key}"), ("int_key.pth has a weight named 3",)),
    "pretrained weights under a number": (t("--tag", "fresh", "--pretrained", "{int_key}"), ("weight named 3",)),
    **{f"random states {kind}": (t("--resume", f"{{{name}}}"), (f"{name}.pth has a malformed rng entry",))
       for kind, name in (("as text", "rng_text"), ("as numbers", "rng_numbers"),
                          ("of the wrong types", "rng_values"))},
    "progress entry of the wrong type": (t("--resume", "{bad_progress}"),
                                         ("bad_progress.pth has a malformed resume_at entry",)),
    **{f"entry of the wrong kind: {name}": (t(*flags, f"{{{name}}}"), (f"{name}.pth has a malformed {entry} entry",))
       for name, (entry, _, flags) in MALFORMED_ENTRIES.items()},
    **{f"weights that are not dense real tensors: {name}": (t("--resume", f"{{{name}}}"), (f"{name}.pth has a {kind}",
                                                                                         "model entry"))
       for name, (kind, _) in ODD_WEIGHTS.items()},
    "optimizer moments of other shapes": (t("--resume", "{shifted_moments}"),
                                          ("shifted_moments.pth has optimizer state for other", "exp_avg of")),
    "reference optimizer groups with a number for their parameters": (t("--resume", "{groups_odd}"),
                                                                       ("groups_odd.pth has optimizer state for",)),
    "optimizer moments that are not finite": (t("--resume", "{nan_moments}"), ("non-finite values",)),
    "a mid-epoch position past the epoch's batches": (t("--resume", "{past_epoch}"),
                                                      ("after 999 batches of epoch 2", "now has")),
    "a TorchScript program": (t("--resume", "{scripted}"), ("scripted.pt is a TorchScript program",)),
    "a TorchScript program to evaluate": (t("--eval", "--resume", "{scripted}"), ("is a TorchScript program",)),
    "an early checkpoint of the run in its folder": (t("--resume", "{epoch_0}"), ("from later in training",
                                                                                 "ckpt_epoch_1.pth")),
    "a new run over a run's checkpoints without auto-resume": (t(opts=("TRAIN.AUTO_RESUME", "False")),
                                                               ("TRAIN.AUTO_RESUME is off", "--tag")),
    "SimMIM pre-training resumed as a classifier": (t("--resume", "{simmim}"),
                                                    ("simmim.pth is SimMIM pre-training", "--pretrained")),
    "SimMIM pre-training evaluated as a classifier": (t("--eval", "--resume", "{simmim}"),
                                                      ("is SimMIM pre-training", "--pretrained")),
    "a classifier resumed as SimMIM pre-training": (t("--resume", "{checkpoint_as_cfg}", opts=SIMMIM),
                                                    ("holds a classifier", "--pretrained")),
    "SimMIM pre-training fine-tuned without --cfg": ((("--pretrained", "{simmim}"), ()),
                                                     ("its config pre-trains", "--cfg")),
    "SimMIM pre-training evaluated without --cfg": ((("--eval", "--resume", "{simmim}"), ()),
                                                    ("measure a classifier",)),
}


def _data_files(root) -> dict:
    """Data sets that lie, each in its own folder under `root`."""
    sets = {"good": image_tree(str(root / "good"))}
    sets["no_val"] = image_tree(str(root / "no_val"))
    shutil.rmtree(os.path.join(sets["no_val"], "val"))
    sets["other_val_names"] = image_tree(str(root / "other_val_names"))
    os.rename(os.path.join(sets["other_val_names"], "val", "b"), os.path.join(sets["other_val_names"], "val", "c"))
    sets["empty_class"] = image_tree(str(root / "empty_class"))
    os.makedirs(os.path.join(sets["empty_class"], "train", "c"))
    sets["bomb"] = image_tree(str(root / "bomb"))
    (root / "no_images" / "sub").mkdir(parents=True)
    (root / "no_images" / "sub" / "readme.txt").write_text("no images here")
    sets["no_images"] = str(root / "no_images")
    (root / "file_not_folder").write_text("x")
    sets["file_not_folder"] = str(root / "file_not_folder")
    for name in ("not_zip", "cut_zip", "negative", "val_out_of_range", "latin1_map", "bad_line", "missing_member",
                 "huge_label", "encrypted", "unknown_method"):
        sets[name] = zip_tree(str(root / name))
    (root / "not_zip" / "train.zip").write_text("hello")
    cut = root / "cut_zip" / "train.zip"
    cut.write_bytes(cut.read_bytes()[:200])
    (root / "negative" / "train_map.txt").write_text("a/0.png\t-1\n" + (root / "negative" / "train_map.txt")
                                                     .read_text().split("\n", 1)[1])
    (root / "val_out_of_range" / "val_map.txt").write_text("a/0.png\t0\nb/0.png\t5\n")
    (root / "latin1_map" / "train_map.txt").write_bytes("a/0.png\t0\nb/é.png\t1\n".encode("latin-1"))
    (root / "bad_line" / "train_map.txt").write_text("a/0.png 0\n")
    (root / "missing_member" / "train_map.txt").write_text("a/0.png\t0\na/99.png\t1\n")
    (root / "huge_label" / "train_map.txt").write_text("a/0.png\t0\nb/0.png\t99999999999999999999\n")
    patch_member_entry(str(root / "encrypted" / "train.zip"), "a/3.png", flag_bits=1)
    patch_member_entry(str(root / "unknown_method" / "train.zip"), "a/3.png", method=99)
    for name in ("map_is_folder", "zip_is_folder"):
        sets[name] = zip_tree(str(root / name))
    os.remove(root / "map_is_folder" / "train_map.txt")
    (root / "map_is_folder" / "train_map.txt").mkdir()
    os.remove(root / "zip_is_folder" / "val.zip")
    (root / "zip_is_folder" / "val.zip").mkdir()
    sets["fifo"] = image_tree(str(root / "fifo"))
    os.mkfifo(os.path.join(sets["fifo"], "train", "a", "waits.png"))  # opening it would block the loader forever
    sets["dangling"] = image_tree(str(root / "dangling"))
    os.symlink("/no/such/image.png", os.path.join(sets["dangling"], "train", "b", "gone.png"))
    for name, label in (("double_dash", "--0"), ("superscript", "\u00b2")):
        sets[name] = zip_tree(str(root / name))
        (root / name / "train_map.txt").write_text(f"a/0.png\t{label}\n")
    sets["train_is_file"] = image_tree(str(root / "train_is_file"))
    shutil.rmtree(root / "train_is_file" / "train")
    (root / "train_is_file" / "train").write_text("x")
    return sets


DATA_CASES = {
    "missing data path": (("/no/such/data", ()), ("/no/such/data", "does not exist")),
    "data path is a file": (("{file_not_folder}", ()), ("file_not_folder is a file, not a folder",)),
    "data path is a zip file": (("{encrypted}/train.zip", ("DATA.ZIP_MODE", "True")),
                                ("train.zip is a file, not a folder",)),
    "train is a file": (("{train_is_file}", ()), ("train is a file, not a folder",)),
    "map file is a folder": (("{map_is_folder}", ("DATA.ZIP_MODE", "True")),
                             ("train_map.txt is a folder, not a file",)),
    "zip file is a folder": (("{zip_is_folder}", ("DATA.ZIP_MODE", "True")), ("val.zip is a folder, not a file",)),
    "no val folder": (("{no_val}", ()), ("val", "does not exist")),
    "validation classes with other names": (("{other_val_names}", ()), ("'c' is only in validation",)),
    "empty class folder": (("{empty_class}", ()), ("class folder", "has no images")),
    "not a zip": (("{not_zip}", ("DATA.ZIP_MODE", "True")), ("train.zip cannot be opened",)),
    "truncated zip": (("{cut_zip}", ("DATA.ZIP_MODE", "True")), ("train.zip cannot be opened",)),
    "negative label": (("{negative}", ("DATA.ZIP_MODE", "True")), ("train_map.txt line 1", "label -1")),
    "validation label out of range": (("{val_out_of_range}", ("DATA.ZIP_MODE", "True")), ("b/0.png label 5",)),
    "map not UTF-8": (("{latin1_map}", ("DATA.ZIP_MODE", "True")), ("train_map.txt is not UTF-8",)),
    "map line without a tab": (("{bad_line}", ("DATA.ZIP_MODE", "True")), ("train_map.txt line 1",)),
    "map names a missing member": (("{missing_member}", ("DATA.ZIP_MODE", "True")), ("a/99.png",)),
    "label with twenty digits": (("{huge_label}", ("DATA.ZIP_MODE", "True")),
                                 ("train_map.txt line 2", "label 99999999999999999999")),
    "encrypted member": (("{encrypted}", ("DATA.ZIP_MODE", "True", "DATA.CACHE_MODE", "'full'")),
                         ("train.zip:a/3.png cannot be read", "unencrypted")),
    **{f"encrypted member, cache {mode}": (("{encrypted}", ("DATA.ZIP_MODE", "True", "DATA.CACHE_MODE", f"'{mode}'",
                                                          "TAG", f"fresh_{mode}")),  # read in training, no resume
                                           ("train.zip:a/3.png cannot be read", "unencrypted"))
       for mode in ("no", "part")},
    "member of an unknown compression": (("{unknown_method}", ("DATA.ZIP_MODE", "True", "DATA.CACHE_MODE", "'full'")),
                                         ("train.zip:a/3.png cannot be read",)),
    "the zip layout without --zip": (("{negative}", ()), ("holds train.zip and no train/ folder", "--zip")),
    "a FIFO named as an image": (("{fifo}", ()), ("waits.png is not a regular file",)),
    "a link to nothing named as an image": (("{dangling}", ()), ("gone.png is a link to nothing",)),
    "a label of two minus signs": (("{double_dash}", ("DATA.ZIP_MODE", "True")), ("train_map.txt line 1",)),
    "a label in superscript digits": (("{superscript}", ("DATA.ZIP_MODE", "True")), ("train_map.txt line 1",)),
    "pre-training on a folder without images": (("{no_images}", SIMMIM), ("no_images holds no images",)),
    "pre-training on a broken zip": (("{cut_zip}", (*SIMMIM, "DATA.ZIP_MODE", "True")),
                                     ("train.zip cannot be opened",)),
    "pre-training on a missing folder": (("/no/such/images", SIMMIM), ("/no/such/images", "does not exist")),
}


def _case_argv(case: tuple, names: dict, output) -> list:
    argv, opts = case
    argv = [a.format(**names) for a in argv]
    if "--cfg" not in argv:
        return [*argv, "--output", str(output)]
    return [*argv, "--output", str(output), "--opts", *FINISHED, *opts]


ALL_MAIN_CASES = {**{f"config: {k}": v for k, v in CONFIG_FILE_CASES.items()},
                  **{f"value: {k}": v for k, v in VALUE_CASES.items()},
                  **{f"command line: {k}": v for k, v in COMMAND_LINE_CASES.items()},
                  **{f"checkpoint: {k}": v for k, v in CHECKPOINT_CASES.items()}}


@pytest.mark.parametrize("name", sorted(ALL_MAIN_CASES))
def test_main_bad_input_is_one_line_and_damages_nothing(name, finished_run, files, capsys):
    case, fragments = ALL_MAIN_CASES[name]
    before = digest(run_dir(finished_run))
    code, out, err = call(main_module.main, _case_argv(case, files, finished_run), capsys)
    assert_one_error_line(code, out, err, *[f.format(**files) for f in fragments])
    assert digest(run_dir(finished_run)) == before
    assert not os.path.exists(os.path.join(files["folder"], "ran"))  # no pickled code ran


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory):
    return _data_files(tmp_path_factory.mktemp("data_sets"))


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_main_bad_data_is_one_line_and_damages_nothing(name, workers, finished_run, data_sets, capsys):
    (path, opts), fragments = DATA_CASES[name]
    before = digest(run_dir(finished_run))
    argv = ["--cfg", TINY_CFG, "--output", str(finished_run), "--data-path", path.format(**data_sets),
            "--opts", *DIGITS, *FOLDERS, "DATA.NUM_WORKERS", workers, *opts]
    argv = [f"{a}_{workers}" if a.startswith("fresh_") else a for a in argv]  # a tag of its own: no resume
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, *fragments)
    assert digest(run_dir(finished_run)) == before


def test_the_tables_keep_every_case():
    """A guard against cases lost in an edit (the values each key refuses: test_configuration_checks.py)."""
    assert len(ALL_MAIN_CASES) + len(DATA_CASES) >= 150


OUTPUT_CASES = {
    "output is a file": ("{file}", ("cannot be written", "Not a directory")),
    "output name too long": ("{long}", ("cannot be written", "too long")),
}


@pytest.mark.parametrize("mode", [[], ["--throughput"]])  # the folder's lock meets it first; the log file
@pytest.mark.parametrize("name", sorted(OUTPUT_CASES))
def test_output_locations_that_cannot_be_written(name, mode, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    names = {"file": str(tmp_path / "file"), "long": str(tmp_path / ("x" * 300))}
    template, fragments = OUTPUT_CASES[name]
    argv = ["--cfg", TINY_CFG, "--output", template.format(**names), *mode, "--opts", *DIGITS]
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, *fragments)


def test_training_onto_a_full_disk_is_one_line_and_writes_nothing(full_disk, capsys):
    argv = ["--cfg", TINY_CFG, "--output", str(full_disk / "out"), "--opts", *DIGITS]
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, "no space left on the device", str(full_disk))
    assert not [name for _, _, names in os.walk(full_disk / "out") for name in names if name.endswith(".pth")]


def _train_with_stdout(tmp_path, stdout) -> subprocess.CompletedProcess:
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--cfg", TINY_CFG, "--output", str(tmp_path),
               "--opts", *DIGITS, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1"]
    return subprocess.run(command, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_training_with_standard_output_on_a_full_disk_warns_once_and_finishes(tmp_path):
    with open("/dev/full", "w") as full:
        result = _train_with_stdout(tmp_path, full)
    assert result.returncode == 0 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("warning: logging to standard output stopped")
    assert os.path.exists(os.path.join(run_dir(tmp_path), "best.pth"))
    assert "training took" in open(os.path.join(run_dir(tmp_path), "log_rank0.txt")).read()


def test_training_piped_into_a_reader_that_leaves_finishes_quietly(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as pipe:
        result = _train_with_stdout(tmp_path, pipe)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert os.path.exists(os.path.join(run_dir(tmp_path), "best.pth"))


def _train_folders(root: str, *opts: str, workers: str = "0") -> tuple:
    argv = ["--cfg", TINY_CFG, "--output", os.path.join(root, "out"), "--data-path", root, "--opts", *DIGITS,
            *FOLDERS, "DATA.NUM_WORKERS", workers, *opts]
    return argv, run_dir(os.path.join(root, "out"))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_undecodable_training_images_name_the_file(workers, tmp_path, capsys):
    root = image_tree(str(tmp_path / "data"))
    (tmp_path / "data" / "train" / "a" / "3.png").write_bytes(b"")
    (tmp_path / "data" / "train" / "b" / "4.png").write_bytes(png_header_only(200_000, 200_000))
    argv, _ = _train_folders(root, workers=workers)
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, "cannot be decoded")
    assert "3.png cannot be decoded (empty file)" in err or "4.png cannot be decoded (too large" in err


def test_zip_members_with_a_bad_crc_or_no_bytes_name_the_member(tmp_path, capsys):
    root = zip_tree(str(tmp_path / "crc"))
    corrupt_member_crc(os.path.join(root, "train.zip"), "a/3.png")
    argv, _ = _train_folders(root, "DATA.ZIP_MODE", "True")
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, "train.zip:a/3.png cannot be read from the zip", "damaged")
    root = zip_tree(str(tmp_path / "empty"))
    with zipfile.ZipFile(os.path.join(root, "train.zip"), "a") as archive:
        archive.writestr("a/empty.png", b"")
    with open(os.path.join(root, "train_map.txt"), "a", encoding="utf-8") as f:
        f.write("a/empty.png\t0\n")
    argv, _ = _train_folders(root, "DATA.ZIP_MODE", "True")
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, "a/empty.png cannot be decoded (empty file)")
    assert "BytesIO" not in err


def test_a_corrupt_validation_image_costs_no_training_and_skip_counts_it(tmp_path, capsys):
    root = image_tree(str(tmp_path / "data"))
    (tmp_path / "data" / "val" / "b" / "1.png").write_bytes(b"not a png")
    argv, folder = _train_folders(root, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0")
    code, out, err = call(main_module.main, argv, capsys)
    assert_one_error_line(code, out, err, "val/b/1.png cannot be decoded")
    saved = [n for n in os.listdir(folder) if n.startswith("ckpt_epoch_0_step_")]
    assert saved, os.listdir(folder)
    code, out, err = call(main_module.main, argv[:-4] + ["DATA.DECODE_ERRORS", "'skip'", *argv[-4:]], capsys)
    assert code == 0, err
    assert "resumed from" in out and "train 0 [" not in out and "skipped: image" in out
    assert "epoch 0: val top-1" in out and os.path.exists(os.path.join(folder, "ckpt_epoch_0.pth"))


def test_tiny_and_other_sized_images_at_32px_train_and_evaluate(tmp_path, capsys):
    root = image_tree(str(tmp_path / "data"))
    from PIL import Image

    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "data" / "train" / "a" / "0.png")
    Image.new("RGB", (50, 20), (9, 9, 9)).save(tmp_path / "data" / "val" / "a" / "0.png")
    argv, folder = _train_folders(root, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0")
    code, out, err = call(main_module.main, argv, capsys)
    assert code == 0, err
    assert "epoch 0: val top-1" in out


def test_a_real_process_prints_one_line_without_traceback(finished_run, files):
    before = digest(run_dir(finished_run))
    for argv in (("--cfg", files["utf16"]), ("--cfg", TINY_CFG, "--resume", files["nan_ckpt"]),
                 ("--cfg", TINY_CFG, "--resume", files["weight_sparse"])):  # torch warns while loading sparse ones
        assert_user_error(run_main(*argv, "--output", str(finished_run), "--opts", *FINISHED))
    assert digest(run_dir(finished_run)) == before


TORCHRUN_CASES = {
    "unknown key": (("--opts", *FINISHED, "TRAIN.EPOCS", "3"), ("TRAIN.EPOCS",)),
    "missing data": (("--data-path", "/no/such/data", "--opts", *DIGITS, *FOLDERS), ("/no/such/data",)),
    "NaN checkpoint": (("--resume", "{nan_ckpt}", "--opts", *FINISHED), ("non-finite values",)),
    "evaluation of a truncated checkpoint": (("--eval", "--resume", "{cut}", "--opts", *FINISHED), ("cut.pth",)),
    "opts as KEY=VALUE": (("--opts", *FINISHED, "TRAIN.EPOCHS=1"), ("not TRAIN.EPOCHS=1",)),
    "a checkpoint that would run code": (("--resume", "{runs_code}", "--opts", *FINISHED), ("pickles code",)),
    "optimizer moments of other shapes": (("--resume", "{shifted_moments}", "--opts", *FINISHED),
                                          ("optimizer state for other parameters",)),
}


@pytest.mark.parametrize("name", sorted(TORCHRUN_CASES))
def test_torchrun_bad_input_is_one_line_from_rank_0_and_exit_2_everywhere(name, finished_run, files):
    extra, fragments = TORCHRUN_CASES[name]
    before = digest(run_dir(finished_run))
    result = torchrun_main("--cfg", TINY_CFG, "--output", str(finished_run), *[a.format(**files) for a in extra])
    assert_torchrun_user_error(result, *fragments)
    assert digest(run_dir(finished_run)) == before
