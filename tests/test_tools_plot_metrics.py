"""tools/plot_metrics.py: the curves of a run, its best epoch, resumes and per-step learning rates.
"""

import json

from bad_inputs import call
from PIL import Image

from tools import plot_metrics


def test_plot_of_a_short_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": e, "train_loss": 2.0 - 0.3 * e, "val_loss": 2.1 - 0.3 * e, "val_top1": 20.0 + 10 * e,
                "val_top5": 60.0 + 5 * e, "lr": 1e-3 * (1 - e / 4)} for e in range(4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records + records[-1:]))
    assert plot_metrics.main([str(run)]) == 0
    image = Image.open(run / "curves.png")
    assert image.size == (1400, 400)
    assert len(plot_metrics.read_metrics(str(run))) == 4
    assert plot_metrics.main([str(tmp_path / "missing")]) == 2


def test_plot_marks_best_epoch_resumes_and_per_step_lr(class_run, tmp_path, capsys):
    run = class_run["root"] / "out" / "swin_tiny_test" / "default"
    code, out, _ = call(plot_metrics.main, [str(run), "--output", str(tmp_path / "c.png")], capsys)
    assert code == 0 and "lr per step" in out and "0 resumes" in out
    steps = plot_metrics.step_lrs(str(run))
    assert len(steps) == 2 * 8 and steps[0][1] < steps[7][1]  # 2 epochs of 8 steps; the warm-up rises
    records = [{"epoch": e, "run": r, "val_top1": t} for e, r, t in ((0, 0, 10), (1, 0, 30), (2, 1, 30), (3, 2, 20))]
    assert plot_metrics.resumed_epochs(records) == [2, 3]
