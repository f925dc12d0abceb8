"""Plot a run's training curves (loss, learning rate, top-1/top-5 per epoch) from its metrics.jsonl to a PNG.

    python -m tools.plot_metrics output/swin_cifar10/default [--output curves.png]

The best epoch is marked, and so are the epochs where a resumed run took over. The learning rate
is drawn per optimizer step (the warm-up shows) from the run's TensorBoard events when they hold
it, else per epoch.
"""

import argparse
import json
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.run_folder import require_output  # noqa: E402
from cli import StrictParser, run_command  # noqa: E402
from utils import UserError, counted, kind_problem, write_atomically  # noqa: E402

# The figures each epoch record must hold to be drawn (top-5 is drawn where it was measured: over 5 classes);
# SimMIM pre-training has no validation.
_PLOTTED = ("train_loss", "val_loss", "val_top1", "lr")
_PLOTTED_PRETRAINING = ("train_loss", "lr")


def is_pretraining(records: list[dict]) -> bool:
    """A run without validation figures in any epoch: SimMIM pre-training."""
    return not any("val_top1" in r or "val_loss" in r for r in records)


def read_metrics(run_dir: str) -> list[dict]:
    """The per-epoch records of a run; for an epoch logged twice (a resumed run), the later one."""
    path = os.path.join(run_dir, "metrics.jsonl") if os.path.isdir(run_dir) else run_dir
    if problem := kind_problem(path, "file"):
        raise UserError(f"{path} {problem}; point at a run folder that holds metrics.jsonl")
    by_epoch = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); pass the metrics.jsonl that training "
                        "wrote") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = record["epoch"]
        except (ValueError, KeyError, TypeError):
            record = epoch = None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise UserError(f"{path} line {number} is not a metrics record (JSON with a whole epoch number); pass "
                            "the metrics.jsonl that training wrote")
        by_epoch[epoch] = record
    if not by_epoch:
        raise UserError(f"{path} holds no epochs yet; plot it after the first epoch has ended")
    wanted = _PLOTTED_PRETRAINING if is_pretraining(list(by_epoch.values())) else _PLOTTED
    for record in by_epoch.values():
        odd = next((key for key in wanted if not _is_number(record.get(key))), None)
        if odd is not None:
            what = f"{json.dumps(record[odd])[:20]} for {odd}, not a number" if odd in record else f"no {odd}"
            raise UserError(f"{path} epoch {record['epoch']} has {what}; pass the metrics.jsonl that training wrote")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def output_path(output: str) -> str:
    """The file the plot goes to: `output` with an image format matplotlib writes (a name without one gets .png);
    a one-line UserError for another extension, or a path a tool's output may not take (the name given, a folder
    say, and the name written, .png included)."""
    require_output(output)
    extension = os.path.splitext(output)[1][1:].lower()
    if not extension:
        output, extension = output + ".png", "png"
        require_output(output)
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    if extension not in supported:
        raise UserError(f"--output {output}: matplotlib cannot write .{extension} files; end the name with .png, "
                        ".pdf or .svg")
    return output


def step_lrs(run_dir: str) -> list[tuple[int, float]]:
    """(step, lr) for every optimizer step TensorBoard recorded under tensorboard/train; [] when there are none."""
    folder = os.path.join(run_dir, "tensorboard", "train")
    if not os.path.isdir(folder):
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder, size_guidance={"scalars": 0})
    events.Reload()
    if "train/lr_step" not in events.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in events.Scalars("train/lr_step")]


def resumed_epochs(records: list[dict]) -> list[int]:
    """Epochs that a later run than the previous epoch's trained (in whole or in part)."""
    return [b["epoch"] for a, b in zip(records, records[1:]) if b.get("run", 0) != a.get("run", 0)] + \
        ([records[0]["epoch"]] if records[0].get("run", 0) > 0 else [])


def _draw_lr(ax: object, records: list[dict], steps: list[tuple[int, float]]) -> None:
    if steps:
        per_epoch = max(s for s, _ in steps) / (records[-1]["epoch"] + 1)
        ax.plot([s / per_epoch for s, _ in steps], [lr for _, lr in steps], "-")
        ax.set(title="learning rate per step", xlabel="epoch")
    else:
        ax.plot([r["epoch"] for r in records], [r["lr"] for r in records], "o-")
        ax.set(title="learning rate at epoch end", xlabel="epoch")


def _draw_accuracy(ax: object, records: list[dict]) -> None:
    epochs = [r["epoch"] for r in records]
    ax.plot(epochs, [r["val_top1"] for r in records], "o-", label="top-1")
    if all("val_top5" in r for r in records):
        ax.plot(epochs, [r["val_top5"] for r in records], "s-", label="top-5")
    best = max(reversed(records), key=lambda r: r["val_top1"])
    ax.plot([best["epoch"]], [best["val_top1"]], "*", markersize=16, color="gold", markeredgecolor="black",
            label=f"best {best['val_top1']:.2f}% (epoch {best['epoch']})")
    ax.set(title="validation accuracy (%)", xlabel="epoch", ylim=(0, 100))
    ax.legend()


def plot(records: list[dict], output: str, title: str, steps: list[tuple[int, float]] = ()) -> None:
    """Loss, validation accuracy and learning rate; a pre-training run's reconstruction loss and learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs, pretraining = [r["epoch"] for r in records], is_pretraining(records)
    fig, axes = plt.subplots(1, 2 if pretraining else 3, figsize=(10 if pretraining else 14, 4))
    ax_loss, ax_lr = axes[0], axes[-1]
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="masked pixels" if pretraining else "train")
    if not pretraining:
        ax_loss.plot(epochs, [r["val_loss"] for r in records], "s-", label="val")
        _draw_accuracy(axes[1], records)
    ax_loss.set(title="reconstruction loss (L1)" if pretraining else "loss", xlabel="epoch")
    _draw_lr(ax_lr, records, list(steps))
    for ax in axes:
        for i, epoch in enumerate(resumed_epochs(records)):
            ax.axvline(epoch, color="grey", linestyle=":", label="resumed" if i == 0 and ax is not ax_lr else None)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.legend()
    fig.suptitle(title)
    fig.tight_layout()
    write_atomically(output, lambda tmp: fig.savefig(tmp, dpi=100, format=os.path.splitext(output)[1][1:].lower()))
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.plot_metrics", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder (or its metrics.jsonl)")
    parser.add_argument("--output", help="PNG path (default: <run>/curves.png)")
    args = parser.parse_args(argv)
    return run_command(lambda: _plot(args))


def _plot(args: argparse.Namespace) -> int:
    records = read_metrics(args.run)
    run_dir = args.run if os.path.isdir(args.run) else os.path.dirname(args.run)
    output = output_path(args.output or os.path.join(run_dir, "curves.png"))
    steps = step_lrs(run_dir)
    plot(records, output, os.path.normpath(run_dir), steps)
    if is_pretraining(records):
        outcome = f"last reconstruction loss {records[-1]['train_loss']:.4f}"
    else:
        best = max(reversed(records), key=lambda r: r["val_top1"])
        outcome = f"best val top-1 {best['val_top1']:.2f}% at epoch {best['epoch']}"
    resumes = counted(len(resumed_epochs(records)), "resume")
    print(f"wrote {output} ({counted(len(records), 'epoch')}; {outcome}; {resumes}; "
          f"lr {'per step' if steps else 'per epoch'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
