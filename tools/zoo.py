"""List the reference's published weights that --pretrained, --resume and the tools take by name.

    python -m tools.zoo
    python -m tools.zoo --filter swinv2

Each line: name, resolution, window, ImageNet-1k top-1 the reference reports, classes, and
whether the file is already in the torch hub cache ($TORCH_HOME/hub/checkpoints).
"""

import argparse
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.download import cache_path  # noqa: E402
from cli import StrictParser, run_command  # noqa: E402
from models import zoo  # noqa: E402
from utils import UserError  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only names that contain this text")
    args = parser.parse_args(argv)
    return run_command(lambda: _list(args))


def _list(args: argparse.Namespace) -> int:
    shown = [e for e in zoo.entries() if args.filter in e.name]
    if not shown:
        raise UserError(f"no model zoo name contains {args.filter!r}; run `python -m tools.zoo` for all of them")
    width = max(len(e.name) for e in shown)
    print(f"{'name':<{width}}  size  window  top-1  classes  cached")
    for e in shown:
        top1 = f"{e.top1:.1f}" if e.top1 is not None else "-"
        cached = "yes" if os.path.isfile(cache_path(e.url)) else "no"
        print(f"{e.name:<{width}}  {e.resolution:>4}  {e.window:>6}  {top1:>5}  {e.num_classes:>7}  {cached}")
    print(f"cache: {os.path.dirname(cache_path(shown[0].url))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
