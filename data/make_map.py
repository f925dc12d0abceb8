"""Write a reference map file (`<path>\\t<label>` lines) for an ImageFolder tree, to stdout.

    python -m data.make_map DIR/train > DIR/train_map.txt

Paths are relative to DIR/train (as they sit inside train.zip when the folder is zipped) and
labels follow the sorted class order ImageFolder uses.
"""

import os
import sys

from cli import StrictParser, run_command
from data.datasets import ImageFolderDataset


def map_lines(root: str) -> list[str]:
    dataset = ImageFolderDataset(root)
    return [f"{os.path.relpath(path, root)}\t{label}" for path, label in dataset.samples]


def main(argv: list[str] | None = None) -> int:
    parser = StrictParser("python -m data.make_map", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="an ImageFolder split: ROOT/<class>/<image>")
    args = parser.parse_args(argv)
    return run_command(lambda: _write_map(args.root))


def _write_map(root: str) -> int:
    sys.stdout.write("".join(line + "\n" for line in map_lines(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
