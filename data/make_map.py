"""Write a reference map file (`<path>\\t<label>` lines) for an ImageFolder tree, to stdout.

    python -m data.make_map DIR/train > DIR/train_map.txt

Paths are relative to DIR/train (as they sit inside train.zip when the folder is zipped) and
labels follow the sorted class order ImageFolder uses.
"""

import os
import sys

from cli import StrictParser, run_command
from data.datasets import ImageFolderDataset
from utils import DataError, kind_problem


def map_lines(root: str) -> list[str]:
    """One `<path>\\t<label>` line per image; a name that a line cannot hold (a tab or a line break) is a DataError,
    as the reader would refuse the file written."""
    if problem := kind_problem(root, "folder"):
        raise DataError(f"folder {root} {problem}; pass an ImageFolder split, ROOT/<class>/<image>")
    lines = []
    for path, label in ImageFolderDataset(root).samples:
        name = os.path.relpath(path, root)
        if any(mark in name for mark in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            raise DataError(f"image {path} has a tab or line break in its name, which a map file line cannot hold; "
                            "rename it")
        lines.append(f"{name}\t{label}")
    return lines


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
