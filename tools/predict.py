"""Top-k classes for images, folders or globs, with class names; a table on the console, JSON or CSV on request.

    python -m tools.predict --resume output/swin_tiny/default/best.pth photos/ 'more/*.png' --output preds.json
    python -m tools.predict --resume swin_tiny_patch4_window7_224 photo.jpg --topk 3

Names come from the checkpoint (runs trained here store their class names), else from
timm's ImageNet-1k list for a 1000-class model, else the class numbers. Images go through
the config's evaluation transform, in batches.
"""

import argparse
import csv
import glob
import io
import json
import os
import sys
import time
from typing import Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.run_folder import require_output  # noqa: E402
from cli import StrictParser, positive_int, run_command  # noqa: E402
from data.datasets import decode_image, image_files  # noqa: E402
from data.transforms import build_transform  # noqa: E402
from runtime import keep_freed_memory, prepare_for_inference  # noqa: E402
from tools.model_source import add_model_arguments, model_files, model_from_arguments  # noqa: E402
from utils import DataError, UserError, save_text  # noqa: E402


def expand_inputs(inputs: list[str]) -> list[str]:
    """Image files named directly, found under folders (as training finds them: recursively, links followed once,
    nothing but regular files) or matched by globs, in order."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += image_files(item)
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
        if sys.stderr.isatty():  # progress for a person watching; a script's stderr keeps only an error line
            eta = (time.time() - started) / done * (len(paths) - done)
            print(f"predict [{done}/{len(paths)}] eta {eta:.0f}s", file=sys.stderr, flush=True)
    return results


def write_results(results: list, names: list[str], output: Optional[str]) -> None:
    rows = [{"path": path, "top": [{"index": i, "name": names[i], "prob": round(p, 6)} for i, p in top]}
            for path, top in results]
    for row in rows:
        print(f"{row['path']}: " + ", ".join(f"{t['name']} ({t['prob']:.3f})" for t in row["top"]))
    if not output:
        return
    if output.endswith(".csv"):
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["path", "rank", "index", "name", "prob"])
        for row in rows:
            writer.writerows([row["path"], rank, t["index"], t["name"], t["prob"]]
                             for rank, t in enumerate(row["top"], 1))
        save_text(text.getvalue(), output)
    else:
        save_text(json.dumps(rows, indent=1), output)
    print(f"wrote {len(rows)} predictions to {output}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.predict", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    add_model_arguments(parser, "the weights: a checkpoint, a model zoo name or a URL")
    parser.add_argument("--random-weights", action="store_true", help="run without --resume, on random weights")
    parser.add_argument("--topk", type=positive_int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--output", help="write predictions to a .json or .csv file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the model: auto compiles on CUDA and on a CPU runs the linear layers on "
                             "oneDNN's kernel; off runs the model as built (default auto)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible; use --device cpu")
    if args.resume and args.random_weights:
        parser.error("--random-weights and --resume contradict each other; give one")
    return run_command(lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
    paths = expand_inputs(args.inputs)
    if args.output:
        require_output(args.output, [*paths, *model_files(args)])
    if not (args.resume or args.random_weights):
        raise UserError("predict needs weights: pass --resume with a checkpoint, a model zoo name or a URL (or "
                        "--random-weights to try the pipeline on an untrained model)")
    model, config, payload = model_from_arguments(args)
    if args.random_weights:
        print("warning: random weights (--random-weights): these predictions mean nothing")
    names = class_names(config.MODEL.NUM_CLASSES, payload.get("class_names"))
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as main.py's runtime does on a CPU
    size = config.DATA.IMG_SIZE
    example = torch.zeros(min(args.batch_size, len(paths)), 3, size, size, device=device)
    notes: list[str] = []  # how the model was prepared, told after the results: an error stays the only line
    model = prepare_for_inference(model.to(device), example, args.compile, notes.append)
    results = predict(model, build_transform(False, config), paths, args.topk, args.batch_size, device)
    write_results(results, names, args.output)
    for line in notes:
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
