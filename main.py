"""Train, evaluate or time a Swin Transformer: the command line, with the reference code's flags.

    python main.py --cfg configs/demo_digits.yaml
    torchrun --nproc_per_node 8 main.py --cfg configs/swin_tiny.yaml --data-path /data/imagenet --batch-size 128
    python main.py --cfg configs/swin_tiny.yaml --data-path DIR --eval --resume ckpt.pth
    python main.py --cfg configs/swin_tiny.yaml --throughput --disable_amp
"""

import argparse
import logging
import os
import sys
from typing import Optional

from yacs.config import CfgNode

from checkpoints.download import with_local_weights
from checkpoints.run_folder import RunLock
from cli import StrictParser, run_command
from config import get_config
from configuration.checks import reference_only_notes
from jobs.evaluate import run_eval
from jobs.stopping import Interrupted
from jobs.throughput import run_throughput
from jobs.train import run_training
from logger import create_logger
from runtime import init_runtime, launcher_ranks, meet_before_exit, seed_everything, shutdown_runtime
from utils import UserError, announce_user_error, tell, write_to_log_files

# timm train.py flags and what sets the same thing here (hints, not aliases: one way to set each thing).
TIMM_FLAGS = {
    "--lr": "TRAIN.BASE_LR|, a rate per 512 images that is scaled to the global batch",
    "--epochs": "TRAIN.EPOCHS", "--img-size": "DATA.IMG_SIZE",
    "--input-size": "DATA.IMG_SIZE|, one side of the square image", "--workers": "DATA.NUM_WORKERS",
    "-j": "DATA.NUM_WORKERS",
    "--weight-decay": "TRAIN.WEIGHT_DECAY", "--wd": "TRAIN.WEIGHT_DECAY", "--drop-path": "MODEL.DROP_PATH_RATE",
    "--drop": "MODEL.DROP_RATE", "--warmup-epochs": "TRAIN.WARMUP_EPOCHS", "--warmup-lr": "TRAIN.WARMUP_LR",
    "--min-lr": "TRAIN.MIN_LR", "--smoothing": "MODEL.LABEL_SMOOTHING", "--mixup": "AUG.MIXUP",
    "--cutmix": "AUG.CUTMIX", "--aa": "AUG.AUTO_AUGMENT", "--reprob": "AUG.REPROB",
    "--color-jitter": "AUG.COLOR_JITTER",
    "--clip-grad": "TRAIN.CLIP_GRAD", "--seed": "SEED", "--sched": "TRAIN.LR_SCHEDULER.NAME",
    "--model-ema-decay": "TRAIN.EMA_DECAY", "--layer-decay": "TRAIN.LAYER_DECAY", "--log-interval": "PRINT_FREQ",
    "--checkpoint-hist": "TRAIN.KEEP_CHECKPOINTS", "--opt": "TRAIN.OPTIMIZER.NAME",
    "--model": "--pretrained|: a model zoo name brings its config (`python -m tools.zoo` lists them); other models "
    "come from --cfg FILE",
    "-b": "--batch-size", "--data-dir": "--data-path", "--initial-checkpoint": "--pretrained",
    "--grad-accum-steps": "--accumulation-steps", "--experiment": "--tag", "--amp": "--amp-dtype (AMP is on by "
    "default; --disable_amp turns it off)", "--model-ema": "--opts TRAIN.EMA_DECAY 0.9998",
    "--freeze": "--opts TRAIN.FREEZE_STAGES N or TRAIN.LINEAR_PROBE True",
    "--enable-amp": "--amp-dtype (AMP is on by default; --disable_amp turns it off)",
}
_HELP_KEYS = """most used config keys (set with --opts KEY VALUE; all of them are in config.py):
  TRAIN.EPOCHS  TRAIN.BASE_LR  TRAIN.WARMUP_EPOCHS  TRAIN.MIN_LR  TRAIN.WEIGHT_DECAY  TRAIN.CLIP_GRAD
  TRAIN.LAYER_DECAY  TRAIN.FREEZE_STAGES  TRAIN.LINEAR_PROBE  TRAIN.EMA_DECAY  TRAIN.AUTO_RESUME
  DATA.IMG_SIZE  DATA.NUM_WORKERS  DATA.DATASET  MODEL.NUM_CLASSES  MODEL.DROP_PATH_RATE  MODEL.LABEL_SMOOTHING
  AUG.AUTO_AUGMENT  AUG.MIXUP  AUG.CUTMIX  AUG.REPROB  SEED  PRINT_FREQ  SAVE_FREQ
published weights by name: python -m tools.zoo"""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = StrictParser("python main.py", description="Swin Transformer training and evaluation", allow_abbrev=False,
                          flag_hints=TIMM_FLAGS, epilog=_HELP_KEYS,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", metavar="FILE", help="path to the config file (optional with a model zoo name or a "
                        "checkpoint written here: their config is used)")
    parser.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE", help="config KEY VALUE pairs")
    parser.add_argument("--batch-size", type=int, help="batch size per process")
    parser.add_argument("--data-path", help="dataset folder")
    parser.add_argument("--zip", action="store_true", help="read train.zip / val.zip with map files")
    parser.add_argument("--cache-mode", choices=("no", "full", "part"), help="zip cache: no, full or part")
    parser.add_argument("--pretrained", help="weights to fine-tune from (adapted to the model): a file, a model zoo "
                        "name or a URL")
    parser.add_argument("--resume", help="checkpoint to resume from: a file, a model zoo name or a URL")
    parser.add_argument("--accumulation-steps", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing to save memory")
    parser.add_argument("--disable_amp", "--disable-amp", action="store_true", help="run in fp32")
    parser.add_argument("--output", metavar="PATH", help="output root (default: output)")
    parser.add_argument("--tag", help="run tag")
    parser.add_argument("--eval", action="store_true", help="only evaluate")
    parser.add_argument("--throughput", action="store_true", help="only measure inference throughput")
    parser.add_argument("--optim", help="optimizer (adamw or sgd)")
    parser.add_argument("--num-classes", type=int, help="class count (checked against the data)")
    parser.add_argument("--amp-dtype", choices=("fp16", "bf16"), help="mixed-precision dtype")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (default: CUDA when available)")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument("--amp-opt-level", "--amp_opt_level", choices=("O0", "O1", "O2"),
                        help="the reference's apex level: O0 turns mixed precision off; O1 and O2 keep torch AMP")
    parser.add_argument("--fused_window_process", "--fused-window-process", action="store_true",
                        help="accepted for the reference's commands; its CUDA kernel is not needed here")
    parser.add_argument("--fused_layernorm", "--fused-layernorm", action="store_true",
                        help="accepted for the reference's commands; its CUDA kernel is not needed here")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the launcher")
    args = parser.parse_args(argv)
    if args.eval and args.throughput:
        parser.error("--eval and --throughput cannot be combined; run them one after the other")
    return args


def run(config: CfgNode, requested: Optional[CfgNode] = None) -> dict:
    """Set up this process and run the mode `config` asks for; its weights are local files (with_local_weights of
    the `requested` config, whose zoo names and URLs the log relates to them)."""
    rt = init_runtime(config)
    lock = RunLock(config.OUTPUT)
    try:
        if not config.THROUGHPUT_MODE:  # a training or evaluation holds its folder before its first log line there
            rt.agreed(lambda: lock.acquire() if rt.is_main else None)
        logger = create_logger(config.OUTPUT, rt.rank)
        logger.info(f"{rt.describe()}; output {config.OUTPUT}")
        for note in reference_only_notes(config):
            logger.info(note)
        for key in ("PRETRAINED", "RESUME"):
            if requested is not None and requested.MODEL[key] != config.MODEL[key]:
                logger.info(f"--{key.lower()} {requested.MODEL[key]}: {config.MODEL[key]}")
        seed_everything(config.SEED + rt.rank)
        if config.THROUGHPUT_MODE:
            return run_throughput(config, rt, logger)
        if config.EVAL_MODE:
            return run_eval(config, rt, logger)
        return run_training(config, rt, logger)
    finally:
        lock.release()
        shutdown_runtime(rt)


def main(argv: Optional[list[str]] = None) -> int:
    """Exit codes: 0 done, 2 a user mistake (one line), 128 + signal when preempted.

    Under several processes a mistake every rank meets (the config, or one the ranks agreed on) is
    printed by rank 0 alone; one that only this rank met is printed by it.
    """
    args = parse_args(argv)
    is_rank0 = _launched_as()[0] == 0
    return run_command(lambda: _run_main(args, is_rank0), show_errors=is_rank0)


def _launched_as() -> tuple[int, int]:
    """(rank, world size) of this process, where the launcher's variables can tell; (0, 1) where they cannot, which
    _run_main then reports as the mistake it is, from every process."""
    try:
        return launcher_ranks()[:2]
    except UserError:
        return 0, 1


def _run_main(args: argparse.Namespace, is_rank0: bool) -> int:
    world_size = launcher_ranks()[1]  # launcher variables that describe no process are the first mistake to report
    try:
        requested = get_config(args)
        # Weights are fetched before any process group exists, so no rank waits in a collective on a download; the
        # ranks of a node download once (checkpoints.download.local_weights).
        config = with_local_weights(requested)
    except UserError as err:
        err.agreed = True  # every rank reads the same flags and files, and fetches the same weights
        if world_size > 1:
            announce_user_error(err, show=is_rank0)
            meet_before_exit()
        raise
    try:
        run(config, requested)
    except Interrupted as stop:
        if is_rank0:
            tell(f"interrupted: {stop}")
        write_to_log_files(f"interrupted: {stop}")
        return 128 + stop.signum
    return 0


def exit_process(code: int) -> None:
    """Exit with `code`. After a user mistake under a launcher, skip the interpreter's slow teardown: torchrun
    sends SIGTERM to the ranks still alive once one has exited, which would turn their code 2 into a signal."""
    if code == 2 and _launched_as()[1] > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
