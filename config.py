"""Configuration: the reference Swin defaults, YAML files with BASE inheritance, and checks.

The keys and their groups are those of the paper's reference code, so its configs and
command lines work here unchanged. Values are merged strictly: an unknown key or a value
of the wrong type is a `ConfigError` that names the key and, where it can, the fix.
"""

import ast
import difflib
import os
from typing import Any, Iterable, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from config_checks import architecture_differences, validate_config
from models import zoo
from utils import ConfigError, kind_problem, load_checkpoint_file

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
# Model family: swin, swinv2 or swin_mlp.
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
# --eval and --throughput: auto (torch.compile on CUDA; on CPU oneDNN's linear kernel, as compiling ran no faster), on
# (torch.compile), off (the model as built).
_C.TEST.COMPILE = "auto"

# Legacy apex flag of the reference (ignored).
_C.ENABLE_AMP = False
# Mixed precision on accelerators.
_C.AMP_ENABLE = True
# The reference's apex opt level: only --amp-opt-level O0 acts (AMP off), as in the reference.
_C.AMP_OPT_LEVEL = ""
# Mixed-precision dtype: fp16 (with loss scaling) or bf16.
_C.AMP_DTYPE = "fp16"
# On CUDA, let fp32 matmuls and convolutions use TF32 (faster on Ampere and later, 10-bit mantissa). Off by
# default, so that --disable_amp means fp32 throughout.
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


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys.extend(_all_keys(value, full + ".") if isinstance(value, CN) else [full])
    return keys


def _unknown_key_error(full_key: str, source: str) -> ConfigError:
    known = _all_keys(_C)
    close = difflib.get_close_matches(full_key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else "; see config.py for the valid keys"
    return ConfigError(f"config key {full_key} in {source} does not exist{hint}")


def _coerce(full_key: str, value: Any, default: Any, source: str) -> Any:
    """Return `value` in the type of `default`, or raise a ConfigError naming the key."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    elif type(value) is type(default):
        return value
    expected = type(default).__name__
    raise ConfigError(
        f"config key {full_key} in {source} must be of type {expected}, got {value!r} ({type(value).__name__})"
    )


def _merge(cfg: CN, values: dict, source: str, prefix: str = "") -> None:
    for name, value in values.items():
        full_key = f"{prefix}{name}"
        if name not in cfg:
            raise _unknown_key_error(full_key, source)
        current = cfg[name]
        if isinstance(current, CN):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full_key} in {source} is a group; give it KEY: VALUE entries")
            _merge(current, value, source, full_key + ".")
        else:
            cfg[name] = _coerce(full_key, _decode(value), current, source)


def _decode(value: Any) -> Any:
    """Read numbers, lists and booleans written as strings (`1e-8`, `[2, 2]`, `True`), as yacs does."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"config file {self.name} gives {key} twice (line {key_node.start_mark.line + 1}); "
                                  "keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(cfg_file: str) -> dict:
    if problem := kind_problem(cfg_file, "file"):
        raise ConfigError(f"config file {cfg_file} {problem}; pass an existing YAML file to --cfg")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            text = f.read()
        loader = _StrictLoader(text)
        loader.name = cfg_file
        try:
            values = loader.get_single_data()
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {cfg_file} is not UTF-8 text; pass a YAML file saved as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config file {cfg_file} cannot be read ({err.strerror}); check its permissions") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {cfg_file} is not valid YAML{where}; fix its syntax") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {cfg_file} must hold KEY: VALUE entries at the top level")
    return values


def _merge_file(cfg: CN, cfg_file: str, seen: tuple[str, ...] = ()) -> None:
    """Merge `cfg_file` into `cfg`, its BASE files first (relative to its folder)."""
    real = os.path.realpath(cfg_file)
    if real in seen:
        raise ConfigError(f"config file {cfg_file} includes itself through BASE; remove the loop")
    values = _read_yaml(cfg_file)
    bases = values.pop("BASE", None) or []
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config key BASE in {cfg_file} must be a list of file names, e.g. BASE: ['base.yaml']; "
                          f"got {bases!r}")
    for base in bases:
        if base:
            _merge_file(cfg, os.path.join(os.path.dirname(cfg_file), base), seen + (real,))
    _merge(cfg, values, cfg_file)


def _check_pairs(opts: Sequence[str]) -> None:
    """--opts must alternate KEY VALUE: name the key that lacks its value, not whatever ended up last."""
    keys = set(_all_keys(_C))
    for position, item in enumerate(opts):
        key, equals, value = item.partition("=")
        if equals and (key in keys or position % 2 == 0):  # keys hold no "=", values may
            raise ConfigError(f"--opts takes KEY VALUE pairs, not {item}; write --opts {key} {value or 'VALUE'}")
    for position in range(1, len(opts), 2):
        if opts[position] in keys:
            raise ConfigError(f"--opts key {opts[position - 1]} has no value ({opts[position]} follows it); "
                              "give every key a value: --opts KEY VALUE KEY VALUE")
    if len(opts) % 2:
        raise ConfigError(f"--opts key {opts[-1]} has no value; give every key a value: --opts KEY VALUE")


def _merge_opts(cfg: CN, opts: Sequence[str]) -> None:
    _check_pairs(opts)
    for full_key, raw in zip(opts[0::2], opts[1::2]):
        *groups, name = full_key.split(".")
        node = cfg
        for group in groups:
            if group not in node or not isinstance(node[group], CN):
                raise _unknown_key_error(full_key, "--opts")
            node = node[group]
        _merge(node, {name: raw}, "--opts", ".".join(groups) + "." if groups else "")


def _finish(cfg: CN, opts: Iterable[str]) -> CN:
    _merge_opts(cfg, list(opts))
    validate_config(cfg)
    cfg.freeze()
    return cfg


def load_config(cfg_file: str, opts: Iterable[str] = ()) -> CN:
    """Defaults, then `cfg_file` (with its BASE files), then `opts` pairs; checked and frozen.

    Reads neither sys.argv nor the environment, so scripts and tests get the same config
    for the same arguments.
    """
    cfg = default_config()
    _merge_file(cfg, cfg_file)
    return _finish(cfg, opts)


def load_stored_config(text: str, source: str, opts: Iterable[str] = (), for_finetuning: bool = False) -> CN:
    """The config a checkpoint of this project carries, with `opts` on top; OUTPUT back to its root folder.

    `for_finetuning` (--pretrained): a new run on new data, so the data source is the user's to give
    (--data-path), and the run gets its own folder (tag `finetune`), never the one it starts from.
    """
    loader = _StrictLoader(text)
    loader.name = source
    try:
        values = loader.get_single_data()
    except yaml.YAMLError:
        raise ConfigError(f"the config stored in {source} is not valid YAML; pass --cfg") from None
    finally:
        loader.dispose()
    if not isinstance(values, dict):
        raise ConfigError(f"the config stored in {source} is not a KEY: VALUE mapping; pass --cfg")
    cfg = default_config()
    _merge(cfg, values, f"the config stored in {source}")
    # What described the run that wrote it, not its model, starts afresh.
    cfg.MODEL.RESUME = cfg.MODEL.PRETRAINED = ""
    cfg.EVAL_MODE = cfg.THROUGHPUT_MODE = False
    cfg.LOCAL_RANK = 0
    suffix = os.path.join(cfg.MODEL.NAME, cfg.TAG)
    if cfg.OUTPUT.endswith(os.sep + suffix):
        cfg.OUTPUT = cfg.OUTPUT[: -len(suffix) - 1]
    if for_finetuning and cfg.MODEL.SIMMIM.PRETRAIN:
        raise ConfigError(f"{source} is SimMIM pre-training, and its config pre-trains; pass --cfg with a fine-tuning "
                          "config that builds the same encoder (configs/simmim/simmim_finetune__*.yaml for the "
                          "reference's)")
    if for_finetuning:
        for key in ("DATASET", "DATA_PATH", "ZIP_MODE", "CACHE_MODE"):
            cfg.DATA[key] = _C.DATA[key]
        cfg.MODEL.NUM_CLASSES = _C.MODEL.NUM_CLASSES  # the new data's
        cfg.TAG = "finetune"
    return _finish(cfg, opts)


# Named flags of main.py and the config keys they set, as in the reference code.
_FLAG_KEYS = (
    ("batch_size", "DATA.BATCH_SIZE"),
    ("data_path", "DATA.DATA_PATH"),
    ("cache_mode", "DATA.CACHE_MODE"),
    ("pretrained", "MODEL.PRETRAINED"),
    ("resume", "MODEL.RESUME"),
    ("accumulation_steps", "TRAIN.ACCUMULATION_STEPS"),
    ("output", "OUTPUT"),
    ("tag", "TAG"),
    ("optim", "TRAIN.OPTIMIZER.NAME"),
    ("num_classes", "MODEL.NUM_CLASSES"),
    ("amp_dtype", "AMP_DTYPE"),
    ("device", "DEVICE"),
    ("amp_opt_level", "AMP_OPT_LEVEL"),
)
_SWITCH_KEYS = (
    ("zip", "DATA.ZIP_MODE", True),
    ("use_checkpoint", "TRAIN.USE_CHECKPOINT", True),
    ("disable_amp", "AMP_ENABLE", False),
    ("compile", "COMPILE", True),
    ("eval", "EVAL_MODE", True),
    ("throughput", "THROUGHPUT_MODE", True),
    ("fused_window_process", "FUSED_WINDOW_PROCESS", True),
    ("fused_layernorm", "FUSED_LAYERNORM", True),
)


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
    if spec.startswith(("http://", "https://")):
        raise ConfigError(f"{flag} {spec} is a URL outside the model zoo; pass --cfg with the config it was "
                          "trained with")
    text = (payload if payload is not None else load_checkpoint_file(spec)).get("config")
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
    opts = list(args.opts or ())
    _check_pairs(opts)  # alone, before the flags' own pairs follow
    for attr, key in _FLAG_KEYS:
        value = getattr(args, attr, None)
        if value is not None:
            opts += [key, str(value) if not isinstance(value, str) else repr(value)]
    for attr, key, value in _SWITCH_KEYS:
        if getattr(args, attr, False):
            opts += [key, str(value)]
    if getattr(args, "amp_opt_level", None) == "O0":  # the reference's apex level for no mixed precision
        opts += ["AMP_ENABLE", "False"]
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
    cfg.LOCAL_RANK = int(os.environ.get("LOCAL_RANK", getattr(args, "local_rank", None) or 0))
    cfg.OUTPUT = os.path.join(cfg.OUTPUT, cfg.MODEL.NAME, cfg.TAG)
    cfg.freeze()
    return cfg
