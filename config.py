"""Configuration: the reference Swin defaults (`_C`), `load_config` and `get_config`.

Keys, groups and flags are the reference code's, so its configs and command lines work here
unchanged; configuration/merge.py merges them strictly (one line per mistake) and configuration/checks.py
checks values.
"""

import os
from typing import Any, Iterable, Optional

from yacs.config import CfgNode as CN

from checkpoints.download import local_weights
from checkpoints.files import load_checkpoint_file
from checkpoints.run_folder import tag_beside_weights
from configuration.checks import architecture_differences, validate_config
from configuration.merge import flags_as_opts, merge_file, merge_opts, merge_stored_run
from models import zoo
from runtime import launcher_ranks
from utils import ConfigError

_ROOT = os.path.dirname(os.path.abspath(__file__))

_C = CN()

# Base config files, relative to the file that names them; merged before it.
_C.BASE = [""]

_C.DATA = CN()
# Images per process per optimizer micro-step.
_C.DATA.BATCH_SIZE = 128
# Root of the dataset: <path>/train and <path>/val (folders), or the zip files and maps.
_C.DATA.DATA_PATH = ""
# Dataset kind: imagenet (folders or zip), imagenet22K, folder, fake (synthetic) or digits (built-in demo).
_C.DATA.DATASET = "imagenet"
# Input image size, in pixels (square).
_C.DATA.IMG_SIZE = 224
# Interpolation for resizing: random, bilinear or bicubic.
_C.DATA.INTERPOLATION = "bicubic"
# Training crop resize: pil (the reference's) or torch (the same random crops resized by torch's antialiased
# uint8 kernel, about 4x faster per image; the rest of the augmentation is unchanged).
_C.DATA.TRANSFORM_BACKEND = "pil"
# Read train.zip / val.zip with train_map.txt / val_map.txt instead of folders.
_C.DATA.ZIP_MODE = False
# Zip cache: no (read on demand), full (cache every image), part (cache this rank's shard).
_C.DATA.CACHE_MODE = "part"
# Pin host memory in the loaders for faster copies to the GPU.
_C.DATA.PIN_MEMORY = True
# Loader worker processes per rank.
_C.DATA.NUM_WORKERS = 8
# SimMIM pre-training: side of the square patches masked together, in pixels (a multiple of the model's patch).
_C.DATA.MASK_PATCH_SIZE = 32
# SimMIM pre-training: fraction of mask patches masked in each image (rounded up).
_C.DATA.MASK_RATIO = 0.6
# What to do with a training image that fails to decode: fail (name it and stop) or skip (count it).
_C.DATA.DECODE_ERRORS = "fail"

_C.MODEL = CN()
# Model family: swin, swinv2 or swin_mlp (models.build.FAMILIES).
_C.MODEL.TYPE = "swin"
# Model name; also the output sub-folder.
_C.MODEL.NAME = "swin_tiny_patch4_window7_224"
# Checkpoint to fine-tune from (weights only; heads and tables are adapted).
_C.MODEL.PRETRAINED = ""
# Checkpoint to resume from (weights, optimizer, schedule, epoch).
_C.MODEL.RESUME = ""
# Number of classes; 0 means a model without a head. Checked against the data.
_C.MODEL.NUM_CLASSES = 1000
# Dropout rate.
_C.MODEL.DROP_RATE = 0.0
# Stochastic depth rate, reached linearly at the last block.
_C.MODEL.DROP_PATH_RATE = 0.1
# Label smoothing for the cross-entropy when mixup is off.
_C.MODEL.LABEL_SMOOTHING = 0.1
# Attention implementation: auto (fastest measured per mode), sdpa or plain (matmul + softmax).
_C.MODEL.ATTN_IMPL = "auto"

_C.MODEL.SWIN = CN()
# Patch size of the patch embedding, in pixels.
_C.MODEL.SWIN.PATCH_SIZE = 4
# Input channels.
_C.MODEL.SWIN.IN_CHANS = 3
# Channels after the patch embedding (C).
_C.MODEL.SWIN.EMBED_DIM = 96
# Blocks per stage.
_C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
# Attention heads per stage.
_C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
# Window side, in tokens.
_C.MODEL.SWIN.WINDOW_SIZE = 7
# MLP hidden width as a multiple of the channels.
_C.MODEL.SWIN.MLP_RATIO = 4.0
# Bias on the query, key and value projections.
_C.MODEL.SWIN.QKV_BIAS = True
# Attention scale; None means head_dim ** -0.5.
_C.MODEL.SWIN.QK_SCALE = None
# Absolute position embedding added after the patch embedding.
_C.MODEL.SWIN.APE = False
# LayerNorm after the patch embedding.
_C.MODEL.SWIN.PATCH_NORM = True

_C.MODEL.SWINV2 = CN()
# Patch size of the patch embedding, in pixels.
_C.MODEL.SWINV2.PATCH_SIZE = 4
# Input channels.
_C.MODEL.SWINV2.IN_CHANS = 3
# Channels after the patch embedding (C).
_C.MODEL.SWINV2.EMBED_DIM = 96
# Blocks per stage.
_C.MODEL.SWINV2.DEPTHS = [2, 2, 6, 2]
# Attention heads per stage.
_C.MODEL.SWINV2.NUM_HEADS = [3, 6, 12, 24]
# Window side, in tokens.
_C.MODEL.SWINV2.WINDOW_SIZE = 7
# MLP hidden width as a multiple of the channels.
_C.MODEL.SWINV2.MLP_RATIO = 4.0
# Bias on the query and value projections.
_C.MODEL.SWINV2.QKV_BIAS = True
# Absolute position embedding added after the patch embedding.
_C.MODEL.SWINV2.APE = False
# LayerNorm after the patch embedding.
_C.MODEL.SWINV2.PATCH_NORM = True
# Window sizes the pretrained weights used, per stage (0: same as now).
_C.MODEL.SWINV2.PRETRAINED_WINDOW_SIZES = [0, 0, 0, 0]

# SimMIM masked-image pre-training (labels unused); configs/simmim/simmim_pretrain__*.yaml turn it on.
_C.MODEL.SIMMIM = CN()
# Pre-train the encoder by reconstructing masked pixels instead of training a classifier.
_C.MODEL.SIMMIM.PRETRAIN = False
_C.MODEL.SIMMIM.NORM_TARGET = CN()
# Reconstruct pixels normalised by the mean and spread of their neighbourhood, not raw pixels.
_C.MODEL.SIMMIM.NORM_TARGET.ENABLE = False
# Side of that neighbourhood, in pixels (odd).
_C.MODEL.SIMMIM.NORM_TARGET.PATCH_SIZE = 47

_C.MODEL.SWIN_MLP = CN()
# Patch size of the patch embedding, in pixels.
_C.MODEL.SWIN_MLP.PATCH_SIZE = 4
# Input channels.
_C.MODEL.SWIN_MLP.IN_CHANS = 3
# Channels after the patch embedding (C).
_C.MODEL.SWIN_MLP.EMBED_DIM = 96
# Blocks per stage.
_C.MODEL.SWIN_MLP.DEPTHS = [2, 2, 6, 2]
# Spatial-MLP groups (heads) per stage.
_C.MODEL.SWIN_MLP.NUM_HEADS = [3, 6, 12, 24]
# Window side, in tokens.
_C.MODEL.SWIN_MLP.WINDOW_SIZE = 7
# MLP hidden width as a multiple of the channels.
_C.MODEL.SWIN_MLP.MLP_RATIO = 4.0
# Absolute position embedding added after the patch embedding.
_C.MODEL.SWIN_MLP.APE = False
# LayerNorm after the patch embedding.
_C.MODEL.SWIN_MLP.PATCH_NORM = True

_C.TRAIN = CN()
# First epoch (set by resume).
_C.TRAIN.START_EPOCH = 0
# Training epochs.
_C.TRAIN.EPOCHS = 300
# Linear warm-up epochs.
_C.TRAIN.WARMUP_EPOCHS = 20
# AdamW weight decay.
_C.TRAIN.WEIGHT_DECAY = 0.05
# Learning rate for a global batch of 512 (scaled linearly to the real batch).
_C.TRAIN.BASE_LR = 5e-4
# Learning rate at the start of warm-up, per 512 images.
_C.TRAIN.WARMUP_LR = 5e-7
# Final learning rate of the cosine schedule, per 512 images.
_C.TRAIN.MIN_LR = 5e-6
# Gradient norm clip; 0 disables clipping.
_C.TRAIN.CLIP_GRAD = 5.0
# Resume from the newest checkpoint in the output folder when no --resume is given.
_C.TRAIN.AUTO_RESUME = True
# Micro-batches per optimizer step.
_C.TRAIN.ACCUMULATION_STEPS = 1
# Gradient checkpointing per block, to save memory.
_C.TRAIN.USE_CHECKPOINT = False
# Consecutive non-finite losses tolerated (steps skipped) before training stops.
_C.TRAIN.MAX_NONFINITE = 10
# Also save a mid-epoch checkpoint every this many optimizer steps; 0 saves at epoch ends only.
_C.TRAIN.SAVE_STEPS = 0
# Decay of an exponential moving average of the weights, evaluated beside them; 0 disables it.
_C.TRAIN.EMA_DECAY = 0.0
# Keep only the newest this many training checkpoints (best.pth and the resumed one stay); 0 keeps all.
_C.TRAIN.KEEP_CHECKPOINTS = 0

_C.TRAIN.LR_SCHEDULER = CN()
# Schedule: cosine, linear, step or multistep.
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"
# Epochs between decays of the step schedule.
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30
# Decay factor of the step schedule.
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1
# Cosine: count the schedule from the end of warm-up (True) or from step 0 (False).
_C.TRAIN.LR_SCHEDULER.WARMUP_PREFIX = True
# Decay factor of the multistep schedule.
_C.TRAIN.LR_SCHEDULER.GAMMA = 0.1
# Epochs at which the multistep schedule decays.
_C.TRAIN.LR_SCHEDULER.MULTISTEPS = []

_C.TRAIN.OPTIMIZER = CN()
# Optimizer: adamw or sgd.
_C.TRAIN.OPTIMIZER.NAME = "adamw"
# Optimizer epsilon.
_C.TRAIN.OPTIMIZER.EPS = 1e-8
# AdamW betas.
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
# SGD momentum.
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9

# Layer-wise learning-rate decay for fine-tuning: layer l of L trains at lr x LAYER_DECAY^(L - l); 1.0 disables it.
_C.TRAIN.LAYER_DECAY = 1.0
# Fine-tuning: freeze the patch embedding and the first this many stages (0: train everything).
_C.TRAIN.FREEZE_STAGES = 0
# Fine-tuning: train the classifier head alone (a linear probe); everything else is frozen.
_C.TRAIN.LINEAR_PROBE = False
# On a CPU in fp32 without COMPILE, the linear layers train on oneDNN's kernel (the forward pass and the input
# gradients; Swin-T's training step measured 1.02-1.10x faster); False keeps ATen's.
_C.TRAIN.ONEDNN_LINEAR = True

_C.AUG = CN()
# Training crop at 32px and below: pad (the reference's CIFAR crop: RandomCrop with padding 4) or
# random_resized (timm's RandomResizedCrop, as at larger sizes).
_C.AUG.SMALL_IMAGE_CROP = "pad"
# Colour jitter strength; 0 disables it.
_C.AUG.COLOR_JITTER = 0.4
# timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1; none disables it.
_C.AUG.AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
# Random erasing probability.
_C.AUG.REPROB = 0.25
# Random erasing fill: pixel, rand or const.
_C.AUG.REMODE = "pixel"
# Random erasing count.
_C.AUG.RECOUNT = 1
# Mixup alpha; 0 disables mixup.
_C.AUG.MIXUP = 0.8
# CutMix alpha; 0 disables cutmix.
_C.AUG.CUTMIX = 1.0
# CutMix min/max box ratio; overrides alpha when set.
_C.AUG.CUTMIX_MINMAX = None
# Probability of applying mixup or cutmix to a batch.
_C.AUG.MIXUP_PROB = 1.0
# Probability of cutmix rather than mixup when both are on.
_C.AUG.MIXUP_SWITCH_PROB = 0.5
# How mixup parameters are drawn: batch, pair or elem.
_C.AUG.MIXUP_MODE = "batch"

_C.TEST = CN()
# Center crop at evaluation (resize to 256/224 of the size first); False resizes directly.
_C.TEST.CROP = True
# Sequential evaluation sampler (kept for compatibility; evaluation always counts each image once).
_C.TEST.SEQUENTIAL = False
# Shuffle the evaluation set.
_C.TEST.SHUFFLE = False
# --eval, --throughput: auto (torch.compile on CUDA, oneDNN's linear kernel on CPU), on (torch.compile) or off.
_C.TEST.COMPILE = "auto"

# Legacy apex flag of the reference (ignored).
_C.ENABLE_AMP = False
# Mixed precision on accelerators.
_C.AMP_ENABLE = True
# The reference's apex opt level: only --amp-opt-level O0 acts (AMP off), as in the reference.
_C.AMP_OPT_LEVEL = ""
# Mixed-precision dtype: fp16 (with loss scaling) or bf16.
_C.AMP_DTYPE = "fp16"
# On CUDA, fp32 matmuls and convolutions may use TF32 (faster, 10-bit mantissa); off, so --disable_amp means fp32.
_C.ALLOW_TF32 = False
# Device: auto (CUDA when available), cpu or cuda.
_C.DEVICE = "auto"
# Run the model through torch.compile (training, evaluation and throughput).
_C.COMPILE = False
# Output root; runs go to <OUTPUT>/<MODEL.NAME>/<TAG>.
_C.OUTPUT = "output"
# Run tag; the last part of the output folder.
_C.TAG = "default"
# Save a checkpoint every this many epochs (the last epoch is always saved).
_C.SAVE_FREQ = 1
# Log every this many steps.
_C.PRINT_FREQ = 10
# Random seed (each rank adds its rank).
_C.SEED = 0
# Only evaluate.
_C.EVAL_MODE = False
# Only measure throughput.
_C.THROUGHPUT_MODE = False
# Local rank, set by the launcher.
_C.LOCAL_RANK = 0
# The reference's custom CUDA-kernel switches (accepted; not needed: the window shift and partition are one gather).
_C.FUSED_WINDOW_PROCESS = False
_C.FUSED_LAYERNORM = False


def default_config() -> CN:
    """A mutable copy of the defaults."""
    return _C.clone()


def _finish(cfg: CN, opts: Iterable[str]) -> CN:
    merge_opts(cfg, list(opts))
    validate_config(cfg)
    cfg.freeze()
    return cfg


def load_config(cfg_file: str, opts: Iterable[str] = ()) -> CN:
    """Defaults, then `cfg_file` (with its BASE files), then `opts` pairs; checked and frozen.

    Reads neither sys.argv nor the environment, so scripts and tests get the same config
    for the same arguments.
    """
    cfg = default_config()
    merge_file(cfg, cfg_file)
    return _finish(cfg, opts)


def load_stored_config(text: str, source: str, opts: Iterable[str] = (), for_finetuning: bool = False) -> CN:
    """The config a checkpoint of this project carries, with `opts` on top (configuration.merge.merge_stored_run
    says what of the stored run carries over)."""
    cfg = default_config()
    merge_stored_run(cfg, text, source, for_finetuning)
    return _finish(cfg, opts)


def config_from_weights(spec: str, flag: str, opts: Iterable[str] = (), payload: Optional[dict] = None) -> CN:
    """The config for weights given without --cfg: the zoo's for a published name, or the one a checkpoint carries."""
    entry = zoo.find(spec)
    if entry is not None:
        if not entry.config:
            raise ConfigError(f"{flag} {spec}: the reference publishes no config for it; pass --cfg with one that "
                              f"builds a {entry.family} at {entry.resolution}px with {entry.num_classes} classes")
        # The 22k configs leave the class count to the data, as the reference's do: weights used as they are
        # (--resume, the tools) have the file's own; fine-tuning (--pretrained) takes the data's.
        classes = [] if flag == "--pretrained" else ["MODEL.NUM_CLASSES", str(entry.num_classes)]
        return load_config(os.path.join(_ROOT, entry.config), [*classes, *opts])
    if payload is None:
        payload = load_checkpoint_file(local_weights(spec))  # a URL is fetched once, then read from the cache
    text = payload.get("config")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{flag} {spec} carries no config (it was not written by this project); pass --cfg with "
                          "the config it was trained with")
    return load_stored_config(text, spec, opts, for_finetuning=flag == "--pretrained")


def check_published_fits(cfg: CN, cfg_file: str, spec: str, flag: str, with_resolution: bool) -> None:
    """A zoo name given with a --cfg that builds another model is a one-line error naming the config to use."""
    entry = zoo.find(spec)
    if entry is None or not entry.config:
        return
    differences = architecture_differences(cfg, load_config(os.path.join(_ROOT, entry.config)), with_resolution)
    if differences:
        raise ConfigError(f"{flag} {spec} is a {entry.family} at {entry.resolution}px, window {entry.window}, and "
                          f"--cfg {cfg_file} builds another model ({', '.join(differences[:2])}); use --cfg "
                          f"{entry.config}, or leave --cfg out to take it")


def get_config(args: Any) -> CN:
    """The run's config from parsed flags, with the reference semantics.

    File and --opts first, then the named flags that were given; the output folder becomes
    <OUTPUT>/<MODEL.NAME>/<TAG>, and LOCAL_RANK comes from the launcher's environment. Without
    --cfg the config comes with the weights: a zoo name's published config, or the one stored
    in a checkpoint written here.
    """
    opts = flags_as_opts(args, _C)
    given = [(flag, spec) for flag, spec in (("--resume", args.resume), ("--pretrained", args.pretrained)) if spec]
    if args.cfg:
        cfg = load_config(args.cfg, opts)
        for flag, spec in given:
            check_published_fits(cfg, args.cfg, spec, flag, with_resolution=flag == "--resume" or args.eval)
    elif given:
        cfg = config_from_weights(given[0][1], given[0][0], opts)
    else:
        raise ConfigError("no config: pass --cfg FILE, or --pretrained / --resume with a model zoo name or a "
                          "checkpoint written here (`python -m tools.zoo` lists the names)")
    if getattr(args, "data_path", None) and cfg.DATA.DATASET in ("digits", "fake"):
        raise ConfigError(f"--data-path {args.data_path} would not be read: DATA.DATASET is {cfg.DATA.DATASET!r}, "
                          "which brings its own images; add --opts DATA.DATASET imagenet to use the folder, or drop "
                          "--data-path")
    cfg.defrost()
    flag = getattr(args, "local_rank", None)
    if flag is not None and flag < 0:
        raise ConfigError(f"--local_rank is {flag}; a local rank is a whole number from 0 (the launcher sets it)")
    cfg.LOCAL_RANK = launcher_ranks()[2] if "LOCAL_RANK" in os.environ or flag is None else flag
    if not (cfg.EVAL_MODE or cfg.THROUGHPUT_MODE):
        tag_is_ours = not (args.cfg or args.tag or "TAG" in (args.opts or ())[::2])
        cfg.TAG = tag_beside_weights(os.path.join(cfg.OUTPUT, cfg.MODEL.NAME), cfg.TAG, cfg.MODEL.PRETRAINED,
                                     tag_is_ours)
    cfg.OUTPUT = os.path.join(cfg.OUTPUT, cfg.MODEL.NAME, cfg.TAG)
    cfg.freeze()
    return cfg

