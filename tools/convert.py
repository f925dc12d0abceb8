"""Convert Swin weights between this project's (the reference) layout and timm's or torchvision's.

    python -m tools.convert --to timm ckpt.pth swin_tiny_timm.pth
    python -m tools.convert --from torchvision swin_t-704ceda3.pth swin_tiny_reference.pth

Input: a checkpoint (`{'model': ...}` or a bare state dict). Output: `{'model': state_dict}` in
the reference layout, or a bare state dict in timm's / torchvision's.
"""

import argparse
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.entries import model_state_from  # noqa: E402
from checkpoints.files import load_checkpoint_file, save_checkpoint  # noqa: E402
from checkpoints.run_folder import require_output  # noqa: E402
from cli import StrictParser, run_command  # noqa: E402
from models.convert import detect_layout, from_timm, from_torchvision, to_timm, to_torchvision  # noqa: E402
from utils import CheckpointError  # noqa: E402

_TO = {"timm": to_timm, "torchvision": to_torchvision}
_FROM = {"timm": from_timm, "torchvision": from_torchvision}


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.convert", description=__doc__.splitlines()[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to", choices=sorted(_TO), help="from the reference layout to this one")
    direction.add_argument("--from", dest="source", choices=sorted(_FROM), help="from this layout to the reference")
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    return run_command(lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    require_output(args.output, [args.input])
    state = model_state_from(load_checkpoint_file(args.input), args.input)
    expected, found = ("reference" if args.to else args.source), detect_layout(state)
    if found != expected:
        hint = {"reference": "use --to timm or --to torchvision"}.get(found, f"use --from {found}" if found in _FROM
                                                                       else "pass a Swin checkpoint")
        raise CheckpointError(f"checkpoint {args.input} is in the {found} layout, not the {expected} one; {hint}")
    try:
        converted = _TO[args.to](state) if args.to else {"model": _FROM[args.source](state)}
    except ValueError as err:  # what the target layout needs and the input cannot tell
        raise CheckpointError(f"checkpoint {args.input} {err}") from None
    save_checkpoint(converted, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
