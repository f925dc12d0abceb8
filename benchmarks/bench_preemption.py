"""How long the preemption checkpoint takes: Swin-B with its AdamW state, written as training writes it.

    python benchmarks/bench_preemption.py [--cfg configs/swin_base.yaml] [--repeats 3]

torchrun and SLURM send SIGKILL about 30 s after SIGTERM. On SIGTERM training finishes the
optimizer step it is in, gathers every rank's RNG state and writes `ckpt_epoch_E_step_B.pth`
(to a temporary file, then renamed). This prints the seconds for that write, the file size,
and one optimizer step on this machine, so the margin to the 30 s can be read off.
"""

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.progress import save_training_state, training_state  # noqa: E402
from config import load_config  # noqa: E402
from lr_scheduler import build_scheduler, scale_lrs  # noqa: E402
from models import build_model  # noqa: E402
from optimizer import build_optimizer  # noqa: E402
from runtime import Runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default=os.path.join(ROOT, "configs", "swin_base.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.cfg, ("MODEL.NUM_CLASSES", "1000"))
    rt = Runtime(torch.device("cpu"))
    model = build_model(config)
    optimizer = build_optimizer(config, model, scale_lrs(config, 1).base, fused=False)
    scheduler = build_scheduler(config, optimizer, 1000, scale_lrs(config, 1))
    images = torch.randn(args.batch_size, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE)
    started = time.perf_counter()
    model(images).logsumexp(dim=1).mean().backward()
    optimizer.step()
    step_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            progress = {"epoch": 0, "resume_at": [1, 10], "rng": [rt.rng_state()], "world_size": 1}
            state = training_state(model, optimizer, scheduler, rt.make_scaler(), progress, config)
            path = save_training_state(state, folder)
            times.append(time.perf_counter() - started)
        size_mb = os.path.getsize(path) / 2**20
    print(f"model {config.MODEL.NAME}: {params / 1e6:.1f} M parameters, checkpoint {size_mb:.0f} MB")
    print(f"one optimizer step at batch {args.batch_size} on this CPU: {step_s:.1f} s")
    print("preemption save: " + ", ".join(f"{t:.2f} s" for t in times) + f" (min {min(times):.2f} s)")


if __name__ == "__main__":
    main()
