"""Print a model's parameters, multiply-accumulates and per-stage resolution and channels.

    python -m tools.summary --cfg configs/swin_tiny.yaml
"""

import argparse
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cli import StrictParser, run_command  # noqa: E402
from config import load_config  # noqa: E402
from models import build_model  # noqa: E402
from models.summary import summarize  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--opts", nargs="+", help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    return run_command(lambda: _summary(args))


def _summary(args: argparse.Namespace) -> int:
    config = load_config(args.cfg, args.opts or ())
    print(summarize(build_model(config), config.MODEL.NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
