"""main.py with a scripted training loader, run by torchrun for test_jobs_engine's DDP cases: a rank's batch can be
one that lost every image (None, as DATA.DECODE_ERRORS skip gives it), and rank 0 can send itself SIGTERM mid-epoch.

Usage: torchrun ... tests/ddp_engine_worker.py MODE FOLDER MAIN_ARGS...  (MODE: undecodable or sigterm)
"""

import os
import signal
import sys
from collections.abc import Iterable, Iterator

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Batches (0-based) of the 6-batch epoch with no image: on rank 1 alone, and on both ranks (no update at all).
EMPTY_ON_RANK_1, EMPTY_ON_BOTH = (0, 2), (4,)
SIGNAL_AT = 5  # rank 0 receives SIGTERM before this batch of an 80-batch epoch, with PRINT_FREQ 1000


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
