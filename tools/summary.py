"""Print a model's parameters, multiply-accumulates and per-stage resolution and channels.

    python -m tools.summary --cfg configs/swin_tiny.yaml
    python -m tools.summary --resume output/swin_tiny/default/best.pth
"""

import argparse
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.download import local_weights  # noqa: E402
from checkpoints.files import load_checkpoint_file  # noqa: E402
from cli import StrictParser, run_command  # noqa: E402
from models import build_model, zoo  # noqa: E402
from models.summary import summarize  # noqa: E402
from tools.model_source import add_model_arguments, config_from_arguments  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.summary", description=__doc__.splitlines()[0])
    add_model_arguments(parser, "a checkpoint written here or a model zoo name, whose model to describe")
    args = parser.parse_args(argv)
    return run_command(lambda: _summary(args))


def _summary(args: argparse.Namespace) -> int:
    path = local_weights(args.resume) if args.resume and not zoo.find(args.resume) else ""
    config = config_from_arguments(args, path, load_checkpoint_file(path) if path and not args.cfg else None)
    print(summarize(build_model(config), config.MODEL.NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
