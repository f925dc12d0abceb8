"""jobs/results.py: a run ends naming its best epoch and writes per-class results.
"""

import json


def test_training_ends_with_the_best_epoch_and_per_class_results(class_run):
    run = class_run["root"] / "out" / "swin_tiny_test" / "default"
    log = open(run / "log_rank0.txt").read()
    assert "best val top-1" in log and f"weights {run / 'best.pth'}" in log and "over all runs" in log
    report = json.load(open(run / "val_per_class.json"))
    assert [c["images"] for c in report["classes"]] == [3, 3, 3, 3]
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert all("val_top5" not in r and r["run"] == 0 for r in records)
