"""Checkpoint files, read and written safely: written whole or not at all, and read without running pickled code.

Also tells deployment exports (TorchScript, torch.export, ONNX) and training checkpoints apart from other files.
"""

import pickle
import warnings
import zipfile

import torch

from utils import CheckpointError, kind_problem, write_atomically


def is_training_checkpoint(path: str) -> bool:
    """A torch.save archive with optimizer state; one that pickles more than the weights-only loader reads (a
    reference run's config) counts as one too."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()) or _export_kind(path):
                return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return True
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError, AttributeError, TypeError, KeyError):
        return False  # damaged: whatever it was, it no longer holds a run
    return isinstance(payload, dict) and "optimizer" in payload


def save_checkpoint(payload: dict, path: str) -> None:
    """Write `payload` to `path` atomically, so auto-resume never picks a truncated checkpoint."""
    write_atomically(path, lambda tmp: torch.save(payload, tmp))


# What the reference code's checkpoints pickle beyond tensors and plain values: its config, numpy scalars.
_REFERENCE_GLOBALS = {"yacs.config.CfgNode", "argparse.Namespace", "numpy.dtype", "numpy.ndarray",
                      *(f"numpy.{core}.multiarray.{name}" for core in ("core", "_core")
                        for name in ("_reconstruct", "scalar"))}


def _export_kind(path: str) -> str:
    """What deployment format `path` holds ('' for none): ONNX by its name, TorchScript and torch.export programs
    by the members of their zip archives."""
    if path.lower().endswith(".onnx"):
        return "an ONNX model"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return ""
    if any(name.endswith("/constants.pkl") for name in members):
        return "a TorchScript program"
    if any(name.endswith("/models/model.json") for name in members):
        return "a torch.export program"
    return ""


def _load_pickled(path: str) -> object:
    """torch.load with the weights-only unpickler, or the full one where the pickle names nothing but what the
    reference's checkpoints pickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err):
            raise
    foreign = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - _REFERENCE_GLOBALS)
    if foreign:
        raise CheckpointError(f"checkpoint {path} cannot be read: it pickles code from elsewhere "
                              f"({', '.join(foreign)[:120]}), which is never run here; save its weights as "
                              "{'model': state_dict} where that code lives")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint_file(path: str) -> dict:
    """Read a checkpoint as a dict of tensors and plain values, without running pickled code.

    Reference checkpoints pickle their yacs config (and numpy scalars), which torch's weights-only loader
    refuses: a file whose pickle names nothing but those and what that loader allows is read in full; one
    naming any other code (which unpickling would run) is refused.
    """
    if problem := kind_problem(path, "file"):
        raise CheckpointError(f"checkpoint {path} {problem}; pass the path of a checkpoint file (.pth)")
    if exported := _export_kind(path):
        raise CheckpointError(f"checkpoint {path} is {exported} (tools.export writes these for deployment), a "
                              "compiled model, not a checkpoint; pass the checkpoint it was exported from")
    try:
        with warnings.catch_warnings():  # torch's notes on what it checks while loading; our errors say what matters
            warnings.simplefilter("ignore", UserWarning)
            payload = _load_pickled(path)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError,
            ImportError, TypeError, IndexError, KeyError) as err:  # a damaged file, or one pickling foreign code
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({reason[:120]}); it is truncated or not a PyTorch checkpoint"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict of weights")
    return payload
