"""Export a Swin model to ONNX, TorchScript or a torch.export program, and check it against eager PyTorch.

    python -m tools.export --resume output/swin_tiny/default/best.pth --format onnx --output swin_tiny.onnx

The exported model takes B x 3 x S x S images at the config's size S (the batch is dynamic for
ONNX and torch.export) and returns logits. After writing, the file is loaded back (ONNX with
onnxruntime when it is installed) and its logits are compared with the eager model's.
"""

import argparse
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Iterator, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.run_folder import require_output  # noqa: E402
from cli import StrictParser, positive_int, run_command  # noqa: E402
from tools.model_source import add_model_arguments, model_files, model_from_arguments  # noqa: E402
from utils import UserError, out_of_space_as_user_error  # noqa: E402

# ONNX files are protobufs, limited to 2 GB: larger models keep their weights in an external-data file beside.
_ONNX_ONE_FILE_BYTES = 1_800_000_000


def export(model: torch.nn.Module, example: torch.Tensor, fmt: str, path: str, opset: int = 18) -> list[str]:
    """Write `model` (in eval mode) traced on `example` to `path` as onnx, torchscript or export; return the files.

    All or nothing: the files (a large ONNX model has an external-data file beside it) are written in a staging
    folder beside `path` and moved in once complete, so a full disk or a crash leaves no partial model file.
    """
    model.eval()
    folder = os.path.dirname(os.path.abspath(path))
    staging = tempfile.mkdtemp(prefix=".export-", dir=folder)
    try:
        with out_of_space_as_user_error(path):
            _write(model, example, fmt, os.path.join(staging, os.path.basename(path)), opset)
            names = sorted(os.listdir(staging))
            for name in names:
                os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [os.path.join(folder, name) for name in names]


def _write(model: torch.nn.Module, example: torch.Tensor, fmt: str, path: str, opset: int) -> None:
    """Export to `path`. TorchScript and torch.export programs are serialised in memory first: their C++ writers
    abort the process on a full disk, where Python's write raises an error that can be reported."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        if fmt == "onnx":
            weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            with _quiet_logs("torch.onnx", "onnxscript"):  # their notes on converting opsets: checked below
                torch.onnx.export(model, (example,), path, opset_version=opset, dynamo=True, input_names=["images"],
                                  output_names=["logits"], dynamic_shapes={"x": {0: batch}}, verbose=False,
                                  external_data=weight_bytes > _ONNX_ONE_FILE_BYTES)
            _check_written_opset(path, opset)
            return
        buffer = io.BytesIO()
        if fmt == "torchscript":
            with _quiet_torchscript():
                torch.jit.save(torch.jit.trace(model, example), buffer)
        else:
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}}), buffer)
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())


def _check_written_opset(path: str, opset: int) -> None:
    """A UserError when the exporter wrote another opset than asked: below its own (18) it converts down on a
    best-effort basis and silently keeps 18 when that fails, which an older runtime then cannot read."""
    import onnx

    written = next((o.version for o in onnx.load(path, load_external_data=False).opset_import if o.domain in
                    ("", "ai.onnx")), opset)
    if written != opset:
        raise UserError(f"--opset {opset}: the ONNX exporter could not convert this model to it (it wrote opset "
                        f"{written}); pass --opset {written} or newer")


@contextlib.contextmanager
def _quiet_logs(*names: str) -> Iterator[None]:
    """Silence these loggers for the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence TorchScript's deprecation notices and the tracer's notes on shape checks (the traced graph is
    checked against eager logits after writing), so stderr keeps to errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


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
        with _quiet_torchscript():
            return torch.jit.load(path)(images)
    return torch.export.load(path).module()(images)


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.export", description=__doc__.splitlines()[0])
    add_model_arguments(parser, "the weights: a checkpoint, a model zoo name or a URL (random weights without it)")
    parser.add_argument("--format", choices=("onnx", "torchscript", "export"), default="onnx")
    parser.add_argument("--output", required=True)
    parser.add_argument("--opset", type=positive_int, default=18)
    args = parser.parse_args(argv)
    return run_command(lambda: _export(args))


def _check_opset(opset: int) -> None:
    """A one-line UserError for an ONNX opset newer than the installed onnx package defines."""
    try:
        import onnx
    except ImportError:
        return  # torch.onnx then names the missing package itself
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UserError(f"--opset {opset} is newer than the installed onnx defines (at most {newest}); pick {newest} "
                        "or lower")


def _export(args: argparse.Namespace) -> int:
    require_output(args.output, model_files(args))
    if args.format == "onnx":
        _check_opset(args.opset)
    model, config, _ = model_from_arguments(args)
    if not args.resume:
        print("warning: no --resume: exporting random weights")
    size = config.DATA.IMG_SIZE
    for path in export(model, torch.randn(2, 3, size, size), args.format, args.output, args.opset):
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MB)")
    images = torch.randn(3, 3, size, size)
    exported = run_exported(args.format, args.output, images)
    if exported is None:
        print("onnxruntime is not installed, so the file was not run")
        return 0
    with torch.no_grad():
        difference = (exported - model(images)).abs().max().item()
    print(f"checked {args.output}: max |exported - eager| logit difference on 3 images: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
