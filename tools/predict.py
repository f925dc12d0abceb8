"""Top-k classes for images, folders or globs, with class names; a table on the console, JSON or CSV on request.

    python -m tools.predict --cfg configs/swin_tiny.yaml --resume ckpt.pth photos/ 'more/*.png' --output preds.json

Names come from the checkpoint (runs trained here store their class names), else from
timm's ImageNet-1k list for a 1000-class model, else the class numbers. Images go through
the config's evaluation transform, in batches.
"""

import argparse
import csv
import glob
import json
import os
import sys
import time
from typing import Optional

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoint import load_weights  # noqa: E402
from cli import StrictParser, positive_int, run_command  # noqa: E402
from config import load_config  # noqa: E402
from data.datasets import decode_image  # noqa: E402
from data.transforms import build_transform  # noqa: E402
from models import build_model  # noqa: E402
from utils import DataError, load_checkpoint_file, model_state_from, require_folder_of  # noqa: E402


def expand_inputs(inputs: list[str]) -> list[str]:
    """Image files named directly, found under folders (recursively) or matched by globs, in order."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(d, f) for d, _, files in os.walk(item) for f in files
                            if f.lower().endswith(IMG_EXTENSIONS))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"{item} is not an image, a folder or a glob that matches files")
            paths += matches
    if not paths:
        raise DataError("no images found in the inputs; pass image files, folders or globs")
    return paths


def class_names(num_classes: int, stored: Optional[list[str]]) -> list[str]:
    if stored and len(stored) == num_classes:
        return list(stored)
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, object, list[str]]:
    """The config's model with the checkpoint's weights (random weights without one) and its class names."""
    opts = list(args.opts or ())
    payload = load_checkpoint_file(args.resume) if args.resume else {}
    state = model_state_from(payload, args.resume) if args.resume else None
    if state is not None and "head.weight" in state:
        opts += ["MODEL.NUM_CLASSES", str(state["head.weight"].shape[0])]
    config = load_config(args.cfg, opts)
    torch.manual_seed(config.SEED)
    model = build_model(config)
    if state is not None:
        load_weights(model, state, args.resume, "pick the config the checkpoint was trained with")
    return model.eval(), config, class_names(config.MODEL.NUM_CLASSES, payload.get("class_names"))


@torch.no_grad()
def predict(model: torch.nn.Module, transform: object, paths: list[str], topk: int, batch_size: int,
            device: torch.device) -> list[tuple[str, list[tuple[int, float]]]]:
    results, started = [], time.time()
    for start in range(0, len(paths), batch_size):
        batch_paths = paths[start : start + batch_size]
        images = torch.stack([transform(decode_image(p, p)) for p in batch_paths]).to(device)
        probs = model(images).float().softmax(dim=1)
        top = probs.topk(min(topk, probs.shape[1]), dim=1)
        for path, values, indices in zip(batch_paths, top.values.tolist(), top.indices.tolist()):
            results.append((path, list(zip(indices, values))))
        done = start + len(batch_paths)
        eta = (time.time() - started) / done * (len(paths) - done)
        print(f"predict [{done}/{len(paths)}] eta {eta:.0f}s", file=sys.stderr, flush=True)
    return results


def write_results(results: list, names: list[str], output: Optional[str]) -> None:
    rows = [{"path": path, "top": [{"index": i, "name": names[i], "prob": round(p, 6)} for i, p in top]}
            for path, top in results]
    for row in rows:
        print(f"{row['path']}: " + ", ".join(f"{t['name']} ({t['prob']:.3f})" for t in row["top"][:3]))
    if not output:
        return
    if output.endswith(".csv"):
        with open(output, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "rank", "index", "name", "prob"])
            for row in rows:
                writer.writerows([row["path"], rank, t["index"], t["name"], t["prob"]]
                                 for rank, t in enumerate(row["top"], 1))
    else:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.predict", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("--cfg", required=True, help="the model's config")
    parser.add_argument("--resume", help="checkpoint with the weights (random weights without it)")
    parser.add_argument("--topk", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--output", help="write predictions to a .json or .csv file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--opts", nargs="+", help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible; use --device cpu")
    return run_command(lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
    if args.output:
        require_folder_of(args.output)
    model, config, names = load_model(args)
    device = torch.device(args.device)
    results = predict(model.to(device), build_transform(False, config), expand_inputs(args.inputs), args.topk,
                      args.batch_size, device)
    write_results(results, names, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
