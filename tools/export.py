"""Export a Swin model to ONNX, TorchScript or a torch.export program, and check it against eager PyTorch.

    python -m tools.export --cfg configs/swin_tiny.yaml --resume ckpt.pth --format onnx --output swin_tiny.onnx

The exported model takes B x 3 x S x S images at the config's size S (the batch is dynamic for
ONNX and torch.export) and returns logits. After writing, the file is loaded back (ONNX with
onnxruntime when it is installed) and its logits are compared with the eager model's.
"""

import argparse
import os
import sys
from typing import Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoint import load_weights  # noqa: E402
from cli import StrictParser, positive_int, run_command  # noqa: E402
from config import load_config  # noqa: E402
from models import build_model  # noqa: E402
from utils import load_checkpoint_file, model_state_from, require_folder_of  # noqa: E402


def export(model: torch.nn.Module, example: torch.Tensor, fmt: str, path: str, opset: int = 18) -> None:
    """Write `model` (in eval mode) traced on `example` to `path` as onnx, torchscript or export."""
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(model, (example,), path, opset_version=opset, dynamo=True, input_names=["images"],
                              output_names=["logits"], dynamic_shapes={"x": {0: batch}}, verbose=False)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), path)
        else:
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}}), path)


def run_exported(fmt: str, path: str, images: torch.Tensor) -> Optional[torch.Tensor]:
    """Logits of the exported file on `images`, or None for ONNX when onnxruntime is not installed."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(path)(images)
    return torch.export.load(path).module()(images)


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.export", description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--resume", help="checkpoint with the weights (random weights without it)")
    parser.add_argument("--format", choices=("onnx", "torchscript", "export"), default="onnx")
    parser.add_argument("--output", required=True)
    parser.add_argument("--opset", type=positive_int, default=18)
    parser.add_argument("--opts", nargs="+", help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    return run_command(lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    opts = list(args.opts or ())
    state = model_state_from(load_checkpoint_file(args.resume), args.resume) if args.resume else None
    if state is not None and "head.weight" in state:
        opts += ["MODEL.NUM_CLASSES", str(state["head.weight"].shape[0])]
    config = load_config(args.cfg, opts)
    model = build_model(config).eval()
    if state is not None:
        load_weights(model, state, args.resume, "pick the config the checkpoint was trained with")
    require_folder_of(args.output)
    size = config.DATA.IMG_SIZE
    export(model, torch.randn(2, 3, size, size), args.format, args.output, args.opset)
    images = torch.randn(3, 3, size, size)
    exported = run_exported(args.format, args.output, images)
    if exported is None:
        print(f"wrote {args.output}; onnxruntime is not installed, so it was not run")
        return 0
    with torch.no_grad():
        difference = (exported - model(images)).abs().max().item()
    print(f"wrote {args.output}; max |exported - eager| logit difference on 3 images: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
