"""What a researcher reads after validation: accuracy per class and the confusion matrix, as JSON and a PNG.

The counts are summed over ranks like the rest of validation, so any number of processes writes
the same files. The confusion matrix is kept up to `CONFUSION_MAX_CLASSES` classes (a 1000-class
one is 1M counts) and drawn up to `PNG_MAX_CLASSES`.
"""

import json
import os
from typing import Optional

import torch

from runtime import Runtime
from utils import save_text

CONFUSION_MAX_CLASSES = 1000
PNG_MAX_CLASSES = 100


class ClassTally:
    """Per-class image and top-1 hit counts, and (true, predicted) counts, over a validation pass."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        self.hits = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.confusion = (torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
                          if num_classes <= CONFUSION_MAX_CLASSES else None)  # true * C + predicted

    def add(self, targets: torch.Tensor, predicted: torch.Tensor) -> None:
        """Count a batch's labels and top-1 predictions on the device. Sums into fixed-size tensors, not bincount
        or boolean indexing: those size their output from the data and would wait for the device every batch."""
        ones = torch.ones_like(targets, dtype=torch.float64)
        self.count.index_add_(0, targets, ones)
        self.hits.index_add_(0, targets, (predicted == targets).to(torch.float64))
        if self.confusion is not None:
            self.confusion.index_add_(0, targets * self.num_classes + predicted, ones)

    def reduce(self, rt: Runtime) -> None:
        for tensor in (self.hits, self.count) + ((self.confusion,) if self.confusion is not None else ()):
            rt.all_reduce_sum(tensor)

    def report(self, class_names: Optional[list[str]]) -> dict:
        """Per-class top-1 (null for a class without images) and the confusion matrix as nested lists."""
        names = class_names if class_names and len(class_names) == self.num_classes else \
            [str(i) for i in range(self.num_classes)]
        classes = [{"index": i, "name": names[i], "images": int(n), "top1": 100.0 * h / n if n else None}
                   for i, (h, n) in enumerate(zip(self.hits.tolist(), self.count.tolist()))]
        confusion = None
        if self.confusion is not None:
            confusion = self.confusion.view(self.num_classes, self.num_classes).to(torch.int64).tolist()
        return {"classes": classes, "confusion": confusion, "confusion_rows": "true class",
                "confusion_columns": "predicted class"}

    def write(self, folder: str, prefix: str, class_names: Optional[list[str]]) -> list[str]:
        """`<prefix>_per_class.json` and, for up to PNG_MAX_CLASSES classes, `<prefix>_confusion.png`."""
        report = self.report(class_names)
        paths = [os.path.join(folder, f"{prefix}_per_class.json")]
        save_text(json.dumps(report, indent=1), paths[0])
        if report["confusion"] is not None and self.num_classes <= PNG_MAX_CLASSES:
            paths.append(os.path.join(folder, f"{prefix}_confusion.png"))
            _draw_confusion(report, paths[1])
        return paths


def describe(stats: dict, digits: int = 2) -> str:
    """`top-1 X% top-5 Y% loss Z` for a validation result (top-5 only where it was measured)."""
    top5 = f" top-5 {stats['top5']:.{digits}f}%" if "top5" in stats else ""
    return f"top-1 {stats['top1']:.{digits}f}%{top5} loss {stats['loss']:.4f}"


def _draw_confusion(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = torch.tensor(report["confusion"], dtype=torch.float64)
    rows = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)  # each true class sums to 1
    names = [c["name"] for c in report["classes"]]
    size = min(4 + 0.25 * len(names), 28)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=90, fontsize=7 if len(names) > 30 else 9)
    ax.set_yticks(ticks, names, fontsize=7 if len(names) > 30 else 9)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (each row sums to 1)")
    if len(names) <= 20:
        for i in ticks:
            for j in ticks:
                if matrix[i, j]:
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rows[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
