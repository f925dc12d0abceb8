"""What benchmarks/gpu_check.sh claims of a finished command, checked from its log and output folder.

    python benchmarks/gpu_check/check_run.py train --log LOG --root OUTPUT [--device cuda] [--precision fp16]
                                             [--world-size N] [--loss-falls] [--scaler] [--resumed-epoch E]
                                             [--compiled] [--nccl]
    python benchmarks/gpu_check/check_run.py eval --eager LOG --compiled LOG
    python benchmarks/gpu_check/check_run.py memory --plain LOG --checkpointed LOG
    python benchmarks/gpu_check/check_run.py syncs --log LOG
    python benchmarks/gpu_check/check_run.py bench --log LOG --modes infer_fp32,...

Prints one line of figures; exits 0 when every claim holds, 1 with the first that does not (the line says which).
"""

import argparse
import glob
import json
import math
import os
import re
import sys

# runtime.Runtime.describe(), logged first by every main.py run.
DESCRIBE = re.compile(r"device (\S+), rank 0 of (\d+), precision (fp16|bf16|fp32)( \(fp32 matmuls in TF32\))?")
TRAIN_LINE = re.compile(r"\] train (\d+) \[(\d+)/(\d+)\] .* loss (\S+) \((\S+)\) .* mem (\d+)MB")
RESUMED = re.compile(r"resumed from (\S+): epoch (\d+), (\d+) batches done")
EVAL_LINE = re.compile(r"eval on (\d+) images: top-1 ([\d.]+)% top-5 ([\d.]+)% loss (\S+)")
SYNCS = re.compile(r"^(\d+) synchronising calls over (\d+) steps; at most (\d+) expected")


class CheckFailed(Exception):
    pass


def need(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def read(path: str) -> str:
    need(os.path.isfile(path), f"no log at {path}")
    with open(path, errors="replace") as handle:
        return handle.read()


def run_folder(root: str) -> str:
    """The one run folder main.py made under --output ROOT (ROOT/<model>/<tag>)."""
    found = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "*", "config.yaml")))
    need(len(found) == 1, f"expected one run folder under {root}, found {len(found)}")
    return found[0]


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_train(args: argparse.Namespace) -> str:
    log = read(args.log)
    figures = []
    described = DESCRIBE.search(log)
    need(described is not None, "the log has no 'device ..., precision ...' line: main.py did not start a run")
    device, world, precision, tf32 = described.groups()
    need(device.split(":")[0] == args.device, f"ran on {device}, not {args.device}")
    need(int(world) == args.world_size, f"world of {world} processes, not {args.world_size}")
    if args.precision:
        need(precision == args.precision, f"the log says precision {precision}, not {args.precision}")
        need(not (args.precision == "fp32" and tf32), "fp32 run with TF32 matmuls (ALLOW_TF32 should be off)")
    figures.append(f"{device} x{world} {precision}{' +TF32' if tf32 else ''}")
    need("training took" in log, "the log has no 'training took' line: training did not finish")

    steps = [m.groups() for m in TRAIN_LINE.finditer(log)]
    need(steps, "the log has no training step lines")
    need(all(finite(float(s[3])) for s in steps), "a logged step loss is not finite")
    figures.append(f"peak mem {max(int(s[5]) for s in steps)}MB")

    if args.resumed_epoch is not None:
        resumed = RESUMED.search(log)
        need(resumed is not None, "the log has no 'resumed from ...' line")
        epoch, batches = int(resumed.group(2)), int(resumed.group(3))
        need((epoch, batches) == (args.resumed_epoch, 0),
             f"resumed at epoch {epoch} after {batches} batches, not at the start of epoch {args.resumed_epoch}")
        trained = sorted({int(s[0]) for s in steps})
        need(trained[0] == args.resumed_epoch,
             f"the resumed run trained epochs {trained}; it should start at {args.resumed_epoch}")
        figures.append(f"resumed at epoch {epoch}, trained epochs {trained}")

    folder = run_folder(args.root)
    with open(os.path.join(folder, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    records = [r for r in records if "train_loss" in r]
    need(records, "metrics.jsonl has no epoch with a train_loss")
    losses = [r["train_loss"] for r in records]
    need(all(finite(x) for x in losses), f"an epoch's train loss is not finite: {losses}")
    skipped = sum(r.get("skipped_steps", 0) for r in records)
    figures.append("train loss by epoch " + ", ".join(f"{x:.4f}" for x in losses)
                   + (f", {skipped:.0f} skipped updates" if skipped else ""))
    if args.loss_falls:
        need(len(losses) >= 2 and losses[-1] < losses[0],
             f"train loss did not fall: {', '.join(f'{x:.4f}' for x in losses)} by epoch")

    last = max(r["epoch"] for r in records)
    checkpoint_path = os.path.join(folder, f"ckpt_epoch_{last}.pth")
    need(os.path.isfile(checkpoint_path), f"no checkpoint of the last epoch ({checkpoint_path})")
    if args.scaler or args.report_scaler:
        import torch

        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        need(checkpoint.get("epoch") == last, f"{checkpoint_path} holds epoch {checkpoint.get('epoch')}")
        scale = (checkpoint.get("scaler") or {}).get("scale")
        if args.scaler:
            need(finite(scale) and scale > 0, f"{os.path.basename(checkpoint_path)} holds no loss scale "
                 f"(scaler state {checkpoint.get('scaler')!r})")
        figures.append(f"ckpt_epoch_{last} loss scale {scale:g}" if finite(scale) else
                       f"ckpt_epoch_{last} without loss scaling")

    if args.compiled:
        forwards = len(re.findall(r"torchinductor compiling FORWARDS graph", log))
        backwards = len(re.findall(r"torchinductor compiling BACKWARDS graph", log))
        need("torchdynamo done tracing" in log and forwards and backwards,
             f"the log does not show the model compiled (TORCH_LOGS=dynamo,inductor: {forwards} forward and "
             f"{backwards} backward graphs compiled)")
        figures.append(f"inductor compiled {forwards} forward and {backwards} backward graph(s)")
        took = re.search(r"training took (\d+)s", log)
        if took:
            figures.append(f"training took {took.group(1)}s")
    if args.nccl:
        version = re.search(r"NCCL version (\S+)", log)
        need(version is not None, "the log does not show NCCL (NCCL_DEBUG=VERSION prints its version when used)")
        figures.append(f"NCCL {version.group(1)}")
    return "; ".join(figures)


def eval_figures(path: str) -> tuple[int, float, float]:
    match = None
    for match in EVAL_LINE.finditer(read(path)):
        pass
    need(match is not None, f"{os.path.basename(path)} has no 'eval on N images' line")
    return int(match.group(1)), float(match.group(2)), float(match.group(4))


def check_eval(args: argparse.Namespace) -> str:
    eager_log, compiled_log = read(args.eager), read(args.compiled)
    need("compiled the model for inference" not in eager_log, "the eager run (TEST.COMPILE off) compiled")
    fell_back = re.search(r"torch\.compile failed.*", compiled_log)
    need(fell_back is None, f"{fell_back.group(0)[:200] if fell_back else ''}")
    took = re.search(r"compiled the model for inference in ([\d.]+)s", compiled_log)
    need(took is not None, "the default --eval did not compile (no 'compiled the model' line)")
    n_eager, top1_eager, loss_eager = eval_figures(args.eager)
    n_compiled, top1_compiled, loss_compiled = eval_figures(args.compiled)
    line = (f"compiled in {took.group(1)}s; {n_compiled} images: top-1 {top1_compiled:.3f}% vs eager "
            f"{top1_eager:.3f}%, loss {loss_compiled:.4f} vs {loss_eager:.4f}")
    need(n_eager == n_compiled, f"{line}: not the same images")
    # fp16 autocast: fused kernels round differently, so a near-tie may flip; one image in 200, and 0.005 in loss.
    one_image = 100.0 / n_eager
    need(abs(top1_eager - top1_compiled) <= max(one_image, 0.5) + 1e-6, f"{line}: top-1 differs")
    need(abs(loss_eager - loss_compiled) <= 0.005, f"{line}: loss differs by more than 0.005")
    return line


def peak_training_memory(path: str) -> int:
    steps = [m.groups() for m in TRAIN_LINE.finditer(read(path))]
    need(steps, f"{os.path.basename(path)} has no training step lines")
    return max(int(s[5]) for s in steps)


def check_memory(args: argparse.Namespace) -> str:
    plain, checkpointed = peak_training_memory(args.plain), peak_training_memory(args.checkpointed)
    line = f"peak {checkpointed}MB with --use-checkpoint vs {plain}MB without ({checkpointed / max(plain, 1):.2f}x)"
    need(checkpointed < plain, f"{line}: gradient checkpointing saved no memory")
    return line


def check_syncs(args: argparse.Namespace) -> str:
    log = read(args.log)
    match = SYNCS.search(log)
    need(match is not None, "the log has no count of synchronising calls")
    count, steps, most = (int(g) for g in match.groups())
    sites = re.findall(r"^  (.*)$", log, re.MULTILINE)[:3]
    line = f"{count} synchronising calls over {steps} steps (at most {most} expected)"
    need(count >= 1, f"{line}: sync debug mode caught none, so it is not counting (.tolist() of a flush must show)")
    need(count <= most, f"{line}; first: {' / '.join(sites)}")
    return line


def check_bench(args: argparse.Namespace) -> str:
    log = read(args.log)
    header = re.search(r"^mode +(.*)$", log, re.MULTILINE)
    need(header is not None, "no table header in bench_swin's output")
    columns = header.group(1).split()
    figures = []
    for mode in args.modes.split(","):
        row = re.search(rf"^{re.escape(mode)} +(.*)$", log, re.MULTILINE)
        need(row is not None, f"no row for {mode}")
        values = [float(v) for v in row.group(1).split()]
        need(values and all(finite(v) and v > 0 for v in values), f"{mode}: a figure is missing or not finite "
             f"({row.group(1).strip()})")
        ours = values[columns.index("ours")] if "ours" in columns else float("nan")
        figures.append(f"{mode} ours {ours:.0f} img/s, {values[-1]:.2f}x the best other")
    return "; ".join(figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    train.add_argument("--log", required=True)
    train.add_argument("--root", required=True, help="the run's --output")
    train.add_argument("--device", default="cuda")
    train.add_argument("--precision", choices=("fp16", "bf16", "fp32"))
    train.add_argument("--world-size", type=int, default=1)
    train.add_argument("--loss-falls", action="store_true", help="the last epoch's train loss below the first's")
    train.add_argument("--scaler", action="store_true", help="the last checkpoint holds a loss scale")
    train.add_argument("--report-scaler", action="store_true", help="say whether it holds one")
    train.add_argument("--resumed-epoch", type=int)
    train.add_argument("--compiled", action="store_true", help="the log (TORCH_LOGS=dynamo,inductor) shows compiling")
    train.add_argument("--nccl", action="store_true", help="the log (NCCL_DEBUG=VERSION) shows NCCL")
    evaluation = commands.add_parser("eval")
    evaluation.add_argument("--eager", required=True)
    evaluation.add_argument("--compiled", required=True)
    memory = commands.add_parser("memory")
    memory.add_argument("--plain", required=True)
    memory.add_argument("--checkpointed", required=True)
    syncs = commands.add_parser("syncs")
    syncs.add_argument("--log", required=True)
    bench = commands.add_parser("bench")
    bench.add_argument("--log", required=True)
    bench.add_argument("--modes", required=True)
    args = parser.parse_args()
    check = {"train": check_train, "eval": check_eval, "memory": check_memory, "syncs": check_syncs,
             "bench": check_bench}[args.command]
    try:
        print(check(args))
    except CheckFailed as failed:
        print(failed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
