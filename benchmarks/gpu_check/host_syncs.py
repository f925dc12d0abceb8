"""Host synchronisations of engine.train_one_epoch on CUDA, counted by torch's sync debug mode.

    python benchmarks/gpu_check/host_syncs.py [--steps 50]

A small MLP trains one epoch of `--steps` batches (fused AdamW, bf16 autocast, no loss scaler) with print_freq far
above the step count, so the epoch has two logging steps (the first and the last) and the flush at its end. Each
flush reads the device sums once (.tolist()); nothing else of the step should wait for the device. Prints
`N synchronising calls over S steps; at most M expected` and the first call sites; check_run.py syncs judges it.
"""

import argparse
import logging
import os
import sys
import warnings

import torch
from timm.scheduler import StepLRScheduler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jobs import engine
from runtime import Runtime

FLUSHES = 3  # the first logging step, the last logging step, the end of the epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: the sync debug mode counts CUDA synchronisations only")
    rt = Runtime(torch.device("cuda"), amp_dtype=torch.bfloat16)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ctx = engine.TrainContext(model=model, criterion=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                              scheduler=StepLRScheduler(optimizer, decay_t=100, t_in_epochs=False),
                              scaler=torch.amp.GradScaler("cuda", enabled=False), rt=rt,
                              logger=logging.getLogger("host_syncs"), clip_grad=5.0, print_freq=1000)
    data = [(torch.randn(32, 64).pin_memory(), torch.randint(0, 10, (32,)).pin_memory()) for _ in range(args.steps)]
    engine.train_one_epoch(ctx, data[:2], epoch=0)  # warm-up: kernels, optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.train_one_epoch(ctx, data, epoch=1)
    torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    print(f"{len(syncs)} synchronising calls over {args.steps} steps; at most {FLUSHES} expected "
          "(2 logging steps and the end of the epoch)")
    for w in syncs[:5]:
        print(f"  {os.path.relpath(w.filename)}:{w.lineno} {str(w.message)[:100]}")


if __name__ == "__main__":
    main()
