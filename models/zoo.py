"""The reference's published classification weights: name, URL, the config that fits, reported accuracy.

The table (zoo.tsv) is the reference's model hub page as published; `config` is the path of the
matching file in this project's configs/ (empty where the reference has none).
"""

import csv
import difflib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo.tsv")


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint."""

    name: str
    family: str
    pretrain_data: str
    resolution: int
    window: int
    top1: Optional[float]  # ImageNet-1k top-1 the reference reports; None for 22k pre-training files
    num_classes: int
    url: str
    config: str  # relative to the project root; "" when the reference publishes none


@lru_cache(maxsize=1)
def entries() -> tuple[ZooEntry, ...]:
    with open(_TABLE, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return tuple(ZooEntry(name=r["name"], family=r["family"], pretrain_data=r["pretrain_data"],
                          resolution=int(r["resolution"]), window=int(r["window"]),
                          top1=float(r["top1_in1k"]) if r["top1_in1k"] else None,
                          num_classes=int(r["num_classes"]), url=r["url"], config=r["config"]) for r in rows)


def find(spec: str) -> Optional[ZooEntry]:
    """The entry `spec` names: a zoo name (with or without `.pth`) or one of the zoo's URLs; None for a path that
    exists, which is the file the user means even when its name is a zoo name."""
    if os.path.exists(spec):
        return None
    name = spec[:-4] if spec.endswith(".pth") else spec
    return next((e for e in entries() if name == e.name or spec == e.url), None)


def close_names(spec: str) -> list[str]:
    """Zoo names that look like `spec`, for a hint after a typo."""
    return difflib.get_close_matches(spec, [e.name for e in entries()], n=2, cutoff=0.75)
