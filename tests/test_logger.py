"""logger.py: a run's errors reach its log file as well as the terminal.
"""

from conftest import run_main


def test_errors_reach_the_run_log(class_run, tmp_path):
    result = run_main("--eval", "--resume", class_run["ckpt"], "--data-path", str(tmp_path / "missing"), "--output",
                      str(tmp_path))
    assert result.returncode == 2
    log = open(tmp_path / "swin_tiny_test" / "default" / "log_rank0.txt").read()
    assert "error: data path" in log and str(tmp_path / "missing") in log
