"""The training step under torchrun with two CPU processes (gloo): every rank takes part in every step, and a stop
signal is agreed at every optimizer step, not only at logging steps.

Run as a script (by torchrun), this file is main.py with a scripted training loader: a rank's batch can be one that
lost every image (None, as DATA.DECODE_ERRORS skip gives it), and rank 0 can send itself SIGTERM mid-epoch.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator

import torch
from conftest import ROOT, TINY_CFG

# Batches (0-based) of the 6-batch epoch with no image: on rank 1 alone, and on both ranks (no update at all).
EMPTY_ON_RANK_1, EMPTY_ON_BOTH = (0, 2), (4,)
SIGNAL_AT = 5  # rank 0 receives SIGTERM before this batch of an 80-batch epoch, with PRINT_FREQ 1000


def torchrun(tmp_path, mode: str) -> subprocess.CompletedProcess:
    """This file under torchrun in `mode`, with the tiny config for one epoch. After 180 s (a healthy run takes
    about 10) the job is killed, ranks included (torchrun starts each in a session of its own): a rank left waiting
    in a collective would hang otherwise."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               mode, str(tmp_path), "--cfg", TINY_CFG, "--output", str(tmp_path / "out"), "--opts",
               "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1000"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        for pid_file in tmp_path.glob("rank*.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        process.kill()
        raise AssertionError(f"the ranks hung: {process.communicate()[1][-2000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_a_rank_whose_batches_lost_every_image_keeps_step_with_the_other(tmp_path):
    """Rank 1 has no image in its first and third batches, neither rank in the fifth: the run ends, and both ranks
    hold the same weights and made the same five updates (the fifth batch's window, empty everywhere, is none)."""
    result = torchrun(tmp_path, "undecodable")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    different = [k for k in ranks[0]["model"] if not torch.equal(ranks[0]["model"][k], ranks[1]["model"][k])]
    assert not different, different[:3]
    assert ranks[0]["steps"] == ranks[1]["steps"] == [5], (ranks[0]["steps"], ranks[1]["steps"])


def test_sigterm_under_ddp_saves_within_two_steps_whatever_print_freq(tmp_path):
    """Only rank 0 gets the signal, with no logging step before the epoch's end: the ranks agree on it in the
    window's collective and save at the step after next (the signal came before batch 5: step 7), then stop."""
    result = torchrun(tmp_path, "sigterm")
    codes = [int((tmp_path / f"rank{rank}.code").read_text()) for rank in (0, 1)]
    assert codes == [128 + signal.SIGTERM] * 2, (codes, result.stderr[-3000:])
    folder = tmp_path / "out" / "swin_tiny_test" / "default"
    saved = sorted(name for name in os.listdir(folder) if re.match(r"ckpt_epoch_\d+_step_\d+\.pth", name))
    assert saved == [f"ckpt_epoch_0_step_{SIGNAL_AT + 2}.pth"], saved
    assert re.search(r"interrupted: stopped by SIGTERM; saved .*ckpt_epoch_0_step_7\.pth", result.stderr)


class ScriptedBatches:
    """The training loader with some batches replaced by None (`undecodable`: the first 6 batches only), or with
    SIGTERM sent to rank 0 before batch SIGNAL_AT (`sigterm`)."""

    def __init__(self, loader: Iterable, mode: str, rank: int) -> None:
        self.loader, self.mode, self.rank = loader, mode, rank

    def __len__(self) -> int:
        return 6 if self.mode == "undecodable" else len(self.loader)

    def __iter__(self) -> Iterator:
        for index, batch in zip(range(len(self)), self.loader):
            if self.mode == "sigterm" and self.rank == 0 and index == SIGNAL_AT:
                os.kill(os.getpid(), signal.SIGTERM)
            empty = index in EMPTY_ON_BOTH or (self.rank == 1 and index in EMPTY_ON_RANK_1)
            yield None if self.mode == "undecodable" and empty else batch


def _run_worker(mode: str, folder: str, argv: list[str]) -> int:
    """main.main(argv) with the scripted loader; writes this rank's process id, its exit code and, after the epoch,
    its weights and optimizer step counts."""
    import main
    from jobs import engine

    rank = int(os.environ["RANK"])
    with open(os.path.join(folder, f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    train_one_epoch = engine.train_one_epoch

    def scripted_epoch(ctx: engine.TrainContext, loader: Iterable, *args: object) -> dict:
        stats = train_one_epoch(ctx, ScriptedBatches(loader, mode, rank), *args)
        steps = sorted({int(state["step"]) for state in ctx.optimizer.state.values()})
        torch.save({"model": ctx.model.module.state_dict(), "steps": steps}, os.path.join(folder, f"rank{rank}.pth"))
        return stats

    engine.train_one_epoch = scripted_epoch
    code = main.main(argv)
    with open(os.path.join(folder, f"rank{rank}.code"), "w") as f:
        f.write(str(code))
    return code


if __name__ == "__main__":
    sys.exit(_run_worker(sys.argv[1], sys.argv[2], sys.argv[3:]))
