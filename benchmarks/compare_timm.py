"""Train one Swin with this project and with timm's train.py, on the same data, model, recipe and seed, one after
the other, and print per-epoch validation figures, speed and per-step learning rates side by side.

    python benchmarks/compare_timm.py --timm-train ~/pytorch-image-models/train.py                # CIFAR-10, 3 epochs
    python benchmarks/compare_timm.py --timm-train ~/pytorch-image-models/train.py --recipe demo  # seconds per run

timm's train.py lives in the timm repository, not in the pip package: `git clone
https://github.com/huggingface/pytorch-image-models` and pass the path of its train.py (a version
whose imports the installed timm has). Nothing of it is copied here.

Matched through flags: the image folders (CIFAR-10's zips, or the demo's digits, written out once
as class folders that both read), the model (timm's SwinTransformer built with our config's
size, patch, window, width, depths, heads and drop path; parameter counts checked equal), batch,
epochs, AdamW and its betas/eps/weight decay and no-decay groups, lr with per-step warm-up and
cosine (warm-up as a prefix, as the reference), clip 5, label smoothing, RandAugment, colour
jitter, erasing, mixup off, flip, bicubic interpolation, the evaluation resize (no crop at 32px),
fp32, seed, loader workers. The one setting no timm flag reaches is this project's 32px crop
(the reference's RandomCrop with padding 4): here this project runs with
AUG.SMALL_IMAGE_CROP random_resized, timm's RandomResizedCrop.
"""

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from config import load_config  # noqa: E402
from lr_scheduler import scale_lrs  # noqa: E402

RECIPES = {"cifar10": ("configs/swin_cifar10.yaml", 3), "demo": ("configs/demo_digits.yaml", None)}
CIFAR = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "cifar10")
LOG_INTERVAL = 50


def prepare_data(recipe: str, work: str) -> str:
    """Class folders train/ and val/ that both tools read: CIFAR-10's zips extracted, or the demo's digits."""
    folder = os.path.join(work, f"data_{recipe}")
    if os.path.isdir(os.path.join(folder, "val")):
        return folder
    if recipe == "cifar10":
        for split in ("train", "val"):
            with zipfile.ZipFile(os.path.join(CIFAR, f"{split}.zip")) as archive:
                archive.extractall(os.path.join(folder + ".tmp", split))
    else:
        from data.datasets import DigitsDataset

        for split in ("train", "val"):
            dataset = DigitsDataset(split == "train")
            for index in range(len(dataset)):
                image, label = dataset[index]
                os.makedirs(os.path.join(folder + ".tmp", split, str(label)), exist_ok=True)
                image.save(os.path.join(folder + ".tmp", split, str(label), f"{index:04d}.png"))
    os.replace(folder + ".tmp", folder)
    return folder


def ours_command(cfg_path: str, data: str, out: str, seed: int, epochs: int, workers: int) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "main.py"), "--cfg", os.path.join(ROOT, cfg_path), "--data-path", data,
            "--output", out, "--tag", f"seed{seed}", "--device", "cpu", "--opts", "DATA.DATASET", "'imagenet'",
            "SEED", str(seed), "AUG.SMALL_IMAGE_CROP", "random_resized", "TRAIN.EPOCHS", str(epochs),
            "DATA.NUM_WORKERS", str(workers), "PRINT_FREQ", str(LOG_INTERVAL)]


def timm_command(train_py: str, cfg: object, data: str, out: str, seed: int, epochs: int, workers: int) -> list[str]:
    """timm's train.py flags for the recipe of `cfg` (a loaded config of ours), in one process."""
    swin, train, aug = cfg.MODEL.SWIN, cfg.TRAIN, cfg.AUG
    lrs = scale_lrs(cfg, world_size=1)
    model_kwargs = [f"img_size={cfg.DATA.IMG_SIZE}", f"patch_size={swin.PATCH_SIZE}", f"window_size={swin.WINDOW_SIZE}",
                    f"embed_dim={swin.EMBED_DIM}", f"depths={tuple(swin.DEPTHS)}", f"num_heads={tuple(swin.NUM_HEADS)}",
                    f"mlp_ratio={swin.MLP_RATIO}"]
    command = [sys.executable, train_py, "--data-dir", data, "--train-split", "train", "--val-split", "val",
               "--model", "swin_tiny_patch4_window7_224", "--model-kwargs", *model_kwargs,
               "--num-classes", str(cfg.MODEL.NUM_CLASSES), "--input-size", "3", str(cfg.DATA.IMG_SIZE),
               str(cfg.DATA.IMG_SIZE), "-b", str(cfg.DATA.BATCH_SIZE),
               # timm counts the cosine's epochs after a warm-up prefix; ours counts the warm-up in TRAIN.EPOCHS.
               "--epochs", str(epochs - int(train.WARMUP_EPOCHS)), "--opt", "adamw",
               "--opt-eps", str(train.OPTIMIZER.EPS), "--opt-betas", *map(str, train.OPTIMIZER.BETAS),
               "--lr", str(lrs.base), "--weight-decay", str(train.WEIGHT_DECAY), "--sched", "cosine",
               "--sched-on-updates", "--warmup-epochs", str(int(train.WARMUP_EPOCHS)), "--warmup-lr", str(lrs.warmup),
               "--min-lr", str(lrs.min), "--warmup-prefix", "--cooldown-epochs", "0", "--clip-grad",
               str(train.CLIP_GRAD), "--clip-mode", "norm", "--smoothing", str(cfg.MODEL.LABEL_SMOOTHING),
               "--reprob", str(aug.REPROB), "--remode", aug.REMODE, "--recount", str(aug.RECOUNT), "--mixup", "0",
               "--cutmix", "0", "--color-jitter", str(aug.COLOR_JITTER), "--drop-path", str(cfg.MODEL.DROP_PATH_RATE),
               "--drop", str(cfg.MODEL.DROP_RATE), "--seed", str(seed), "--workers", str(workers), "--crop-pct", "1.0",
               "--train-interpolation", cfg.DATA.INTERPOLATION, "--interpolation", cfg.DATA.INTERPOLATION,
               "--output", out, "--experiment", f"seed{seed}", "--log-interval", str(LOG_INTERVAL),
               "--device", "cpu", "--no-prefetcher", "--checkpoint-hist", "1"]
    return command + (["--aa", aug.AUTO_AUGMENT] if aug.AUTO_AUGMENT != "none" else [])


def run(command: list[str], log_path: str) -> float:
    """Run `command` with its output in `log_path`; returns the wall time in seconds."""
    started = time.time()
    with open(log_path, "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode:
        raise SystemExit(f"error: {command[1]} exited with {result.returncode}; see {log_path}")
    return time.time() - started


def ours_results(run_dir: str) -> tuple[list[dict], dict]:
    """Per-epoch figures from metrics.jsonl, and the lr used at each optimizer step (TensorBoard's lr_step)."""
    from tools.plot_metrics import step_lrs

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    epochs = [{"top1": r["val_top1"], "top5": r.get("val_top5"), "loss": r["val_loss"], "img_s": r["train_img_s"]}
              for r in records]
    # lr_step at step k is set after update k - 1: the rate update k uses.
    return epochs, {step: lr for step, lr in step_lrs(run_dir)}


def timm_results(run_dir: str, log_path: str, updates_per_epoch: int) -> tuple[list[dict], dict]:
    """Per-epoch figures from summary.csv and the log, and the lr timm logged at updates (the rate they used)."""
    with open(os.path.join(run_dir, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    text = open(log_path).read()
    pattern = r"Train: (\d+) \[\s*(\d+)/\d+.*?\(\s*[\d.]+s,\s*([\d.]+)/s\)\s+LR: ([\d.e+-]+)"
    lrs, rates = {}, {}
    for epoch, update, rate, lr in re.findall(pattern, text):
        lrs[int(epoch) * updates_per_epoch + int(update)] = float(lr)
        rates[int(epoch)] = float(rate)  # the running mean at the epoch's last logged update
    epochs = [{"top1": float(r["eval_top1"]), "top5": float(r["eval_top5"]), "loss": float(r["eval_loss"]),
               "img_s": rates.get(int(r["epoch"]), float("nan"))} for r in rows]
    return epochs, lrs


def parameter_counts(cfg: object, timm_kwargs: list[str]) -> tuple[int, int]:
    import ast

    import timm

    from models import build_model

    kwargs = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in timm_kwargs)}
    theirs = timm.create_model("swin_tiny_patch4_window7_224", num_classes=cfg.MODEL.NUM_CLASSES, **kwargs)
    return (sum(p.numel() for p in build_model(cfg).parameters()), sum(p.numel() for p in theirs.parameters()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-train", required=True, help="path of train.py from the timm repository")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cifar10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, help="default: 3 for cifar10, the config's for demo")
    parser.add_argument("--workers", type=int, default=1, help="loader workers, both tools")
    parser.add_argument("--work", default=os.path.join(ROOT, "output", "compare_timm"))
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    if not os.path.isfile(args.timm_train):
        parser.error(f"{args.timm_train} is not a file; clone pytorch-image-models and pass its train.py")
    cfg_path, default_epochs = RECIPES[args.recipe]
    data = prepare_data(args.recipe, args.work)
    classes = len(os.listdir(os.path.join(data, "train")))
    cfg = load_config(os.path.join(ROOT, cfg_path), ["MODEL.NUM_CLASSES", str(classes)])
    epochs = args.epochs or default_epochs or cfg.TRAIN.EPOCHS
    train_images = sum(len(files) for _, _, files in os.walk(os.path.join(data, "train")))
    updates = train_images // cfg.DATA.BATCH_SIZE
    timm_kwargs = timm_command(args.timm_train, cfg, data, "", 0, 1, 1)
    timm_kwargs = timm_kwargs[timm_kwargs.index("--model-kwargs") + 1: timm_kwargs.index("--num-classes")]
    results = {"recipe": args.recipe, "config": cfg_path, "epochs": epochs,
               "parameters": parameter_counts(cfg, timm_kwargs), "runs": []}
    for seed in args.seeds:
        for tool in ("swin", "timm"):
            out = os.path.join(args.work, f"{args.recipe}_{tool}")
            shutil.rmtree(os.path.join(out, f"seed{seed}"), ignore_errors=True)
            shutil.rmtree(os.path.join(out, cfg.MODEL.NAME, f"seed{seed}"), ignore_errors=True)
            os.makedirs(out, exist_ok=True)
            log = os.path.join(out, f"seed{seed}.log")
            if tool == "swin":
                wall = run(ours_command(cfg_path, data, out, seed, epochs, args.workers), log)
                per_epoch, lrs = ours_results(os.path.join(out, cfg.MODEL.NAME, f"seed{seed}"))
            else:
                wall = run(timm_command(args.timm_train, cfg, data, out, seed, epochs, args.workers), log)
                per_epoch, lrs = timm_results(os.path.join(out, f"seed{seed}"), log, updates)
            results["runs"].append({"tool": tool, "seed": seed, "wall_s": wall, "epochs": per_epoch, "lr": lrs})
            print(f"{tool} seed {seed}: {wall:.0f} s, final top-1 {per_epoch[-1]['top1']:.2f}%", flush=True)
    report(results, updates, train_images)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def report(results: dict, updates: int, train_images: int) -> None:
    """The side-by-side table, the seed spread, speed ratios and the per-step lr of both at a few steps."""
    ours_params, timm_params = results["parameters"]
    print(f"\nrecipe {results['recipe']} ({results['config']}), {results['epochs']} epochs; parameters: "
          f"swin {ours_params:,}, timm {timm_params:,}")
    print("seed  tool  epoch   top-1   top-5  val loss  train img/s (tool's own)")
    for r in results["runs"]:
        for epoch, e in enumerate(r["epochs"]):
            top5 = f"{e['top5']:7.2f}" if e["top5"] is not None else "      -"
            print(f"{r['seed']:>4}  {r['tool']:<4}  {epoch:>5}  {e['top1']:6.2f}  {top5}  {e['loss']:8.4f}  "
                  f"{e['img_s']:8.1f}")
    for tool in ("swin", "timm"):
        runs = [r for r in results["runs"] if r["tool"] == tool]
        finals = [r["epochs"][-1]["top1"] for r in runs]
        mean = sum(finals) / len(finals)
        spread = (max(finals) - min(finals)) / 2
        wall = sum(r["wall_s"] for r in runs) / len(runs)
        seeds = ", ".join(f"{f:.2f}" for f in finals)
        print(f"{tool}: final top-1 {mean:.2f}% +- {spread:.2f} (half the range over seeds: {seeds}); {wall:.0f} s "
              f"per run, {results['epochs'] * train_images / wall:.1f} img/s of wall time (training and validation)")
    first = {r["tool"]: r for r in results["runs"] if r["seed"] == results["runs"][0]["seed"]}
    steps = sorted(set(first["swin"]["lr"]) & set(first["timm"]["lr"]))
    shown = [s for s in steps if s in (LOG_INTERVAL, 2 * LOG_INTERVAL) or s % updates in (0, LOG_INTERVAL)][:8]
    print("update  lr swin     lr timm     rel. diff")
    worst = 0.0
    for step in steps:
        ours, theirs = first["swin"]["lr"][step], first["timm"]["lr"][step]
        worst = max(worst, abs(ours - theirs) / theirs)
        if step in shown:
            print(f"{step:>6}  {ours:.4e}  {theirs:.4e}  {abs(ours - theirs) / theirs:.1e}")
    print(f"largest relative lr difference over {len(steps)} compared updates: {worst:.1e}")


if __name__ == "__main__":
    sys.exit(main())
