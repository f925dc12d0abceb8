"""Checks on a merged config: every choice key among its choices, every number in its range, and an
architecture the data size can be cut into. Each failure is one ConfigError naming the key and the fix.
"""

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from timm.data import auto_augment
from yacs.config import CfgNode as CN

from models.build import FAMILIES, family_group
from utils import ConfigError

CHOICES = {
    "DATA.DATASET": ("imagenet", "imagenet22K", "folder", "fake", "digits"),
    "DATA.INTERPOLATION": ("random", "bilinear", "bicubic"),
    "DATA.TRANSFORM_BACKEND": ("pil", "torch"),
    "TEST.COMPILE": ("auto", "on", "off"),
    "DATA.CACHE_MODE": ("no", "full", "part"),
    "DATA.DECODE_ERRORS": ("fail", "skip"),
    "MODEL.TYPE": tuple(FAMILIES),
    "AUG.SMALL_IMAGE_CROP": ("pad", "random_resized"),
    "MODEL.ATTN_IMPL": ("auto", "sdpa", "plain"),
    "TRAIN.LR_SCHEDULER.NAME": ("cosine", "linear", "step", "multistep"),
    "TRAIN.OPTIMIZER.NAME": ("adamw", "sgd"),
    "AUG.REMODE": ("pixel", "rand", "const"),
    "AUG.MIXUP_MODE": ("batch", "pair", "elem"),
    "AMP_DTYPE": ("fp16", "bf16"),
    "DEVICE": ("auto", "cpu", "cuda"),
    "AMP_OPT_LEVEL": ("", "O0", "O1", "O2"),
}


def reference_only_notes(cfg: CN) -> list[str]:
    """What the reference's apex and CUDA-kernel switches mean here, for each one a config turns on."""
    notes = []
    if cfg.AMP_OPT_LEVEL:
        notes.append(f"AMP_OPT_LEVEL {cfg.AMP_OPT_LEVEL}: apex is not used; precision follows AMP_ENABLE and AMP_DTYPE "
                     "(torch AMP; --amp-opt-level O0 turns it off)")
    kernels = {"FUSED_WINDOW_PROCESS": "the window shift and partition are already one gather",
               "FUSED_LAYERNORM": "layer norm runs PyTorch's own fused kernel"}
    notes += [f"{key}: the reference's custom CUDA kernel is not needed here: {why}"
              for key, why in kernels.items() if cfg[key]]
    return notes


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key (of each element, for a list key); `high` None means unbounded."""

    low: float
    high: Optional[float] = None
    high_open: bool = False
    low_open: bool = False
    integer: bool = False

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.high is None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        high = f"{self.high:d}" if self.integer else f"{self.high:g}"
        return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {high}{')' if self.high_open else ']'}"


COUNT = Range(1, integer=True)  # 1, 2, ...
NON_NEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
FRACTION_BELOW_ONE = Range(0, 1, high_open=True)
# Seeds feed numpy's 32-bit generator and torch's 64-bit one after adding the rank and epoch.
SEED_RANGE = Range(0, 2**32 - 1, integer=True)

_ARCHITECTURE = {"PATCH_SIZE": COUNT, "IN_CHANS": COUNT, "EMBED_DIM": COUNT, "DEPTHS": COUNT, "NUM_HEADS": COUNT,
                 "WINDOW_SIZE": COUNT, "MLP_RATIO": POSITIVE}
RANGES = {
    "DATA.BATCH_SIZE": COUNT, "DATA.IMG_SIZE": COUNT, "DATA.NUM_WORKERS": NON_NEGATIVE_INT,
    "DATA.MASK_PATCH_SIZE": COUNT, "DATA.MASK_RATIO": PROBABILITY, "MODEL.SIMMIM.NORM_TARGET.PATCH_SIZE": COUNT,
    "MODEL.NUM_CLASSES": NON_NEGATIVE_INT, "MODEL.DROP_RATE": FRACTION_BELOW_ONE,
    "MODEL.DROP_PATH_RATE": FRACTION_BELOW_ONE, "MODEL.LABEL_SMOOTHING": FRACTION_BELOW_ONE,
    **{f"MODEL.{family}.{key}": rule for family in ("SWIN", "SWINV2", "SWIN_MLP")
       for key, rule in _ARCHITECTURE.items()},
    "MODEL.SWIN.QK_SCALE": POSITIVE, "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES": NON_NEGATIVE_INT,
    "TRAIN.START_EPOCH": NON_NEGATIVE_INT, "TRAIN.EPOCHS": COUNT, "TRAIN.WARMUP_EPOCHS": NON_NEGATIVE,
    "TRAIN.WEIGHT_DECAY": NON_NEGATIVE, "TRAIN.BASE_LR": POSITIVE, "TRAIN.WARMUP_LR": NON_NEGATIVE,
    "TRAIN.MIN_LR": NON_NEGATIVE, "TRAIN.CLIP_GRAD": NON_NEGATIVE, "TRAIN.ACCUMULATION_STEPS": COUNT,
    "TRAIN.MAX_NONFINITE": COUNT, "TRAIN.SAVE_STEPS": NON_NEGATIVE_INT, "TRAIN.EMA_DECAY": FRACTION_BELOW_ONE,
    "TRAIN.KEEP_CHECKPOINTS": NON_NEGATIVE_INT, "TRAIN.LR_SCHEDULER.DECAY_EPOCHS": POSITIVE,
    "TRAIN.LR_SCHEDULER.DECAY_RATE": POSITIVE, "TRAIN.LR_SCHEDULER.GAMMA": POSITIVE,
    "TRAIN.LR_SCHEDULER.MULTISTEPS": NON_NEGATIVE, "TRAIN.OPTIMIZER.EPS": POSITIVE,
    "TRAIN.OPTIMIZER.BETAS": FRACTION_BELOW_ONE, "TRAIN.OPTIMIZER.MOMENTUM": FRACTION_BELOW_ONE,
    "TRAIN.LAYER_DECAY": Range(0, 1, low_open=True), "TRAIN.FREEZE_STAGES": NON_NEGATIVE_INT,
    "AUG.COLOR_JITTER": NON_NEGATIVE, "AUG.REPROB": PROBABILITY, "AUG.RECOUNT": COUNT, "AUG.MIXUP": NON_NEGATIVE,
    "AUG.CUTMIX": NON_NEGATIVE, "AUG.CUTMIX_MINMAX": Range(0, 1, low_open=True), "AUG.MIXUP_PROB": PROBABILITY,
    "AUG.MIXUP_SWITCH_PROB": PROBABILITY,
    "SAVE_FREQ": COUNT, "PRINT_FREQ": COUNT, "SEED": SEED_RANGE, "LOCAL_RANK": NON_NEGATIVE_INT,
}
# List keys and the number of elements they must have (None: any number, at least one).
_LIST_LENGTHS = {"TRAIN.OPTIMIZER.BETAS": 2, "AUG.CUTMIX_MINMAX": 2, "TRAIN.LR_SCHEDULER.MULTISTEPS": 0}


def value_at(cfg: CN, full_key: str) -> Any:
    value = cfg
    for part in full_key.split("."):
        value = value[part]
    return value


def _check_range(full_key: str, value: Any, rule: Range) -> None:
    if value is None and full_key in ("MODEL.SWIN.QK_SCALE", "AUG.CUTMIX_MINMAX"):
        return
    if isinstance(value, (list, tuple)):
        wanted = _LIST_LENGTHS.get(full_key)
        if (wanted and len(value) != wanted) or (wanted is None and not value):
            size = f"{wanted} numbers" if wanted else "one number or more"
            raise ConfigError(f"config key {full_key} is {list(value)}; it takes {size}")
        bad = [v for v in value if not rule.holds(v)]
        if bad:
            raise ConfigError(f"config key {full_key} is {list(value)}; each element must be {rule.describe()} "
                              f"({bad[0]!r} is not)")
        return
    if not rule.holds(value):
        raise ConfigError(f"config key {full_key} is {value!r}; it must be {rule.describe()}")


def validate_config(cfg: CN) -> None:
    """Fail early, with one line, on values the model or data code could not use."""
    for full_key, allowed in CHOICES.items():
        value = value_at(cfg, full_key)
        if value not in allowed:
            raise ConfigError(f"config key {full_key} is {value!r}; use one of {', '.join(allowed)}")
    for full_key, rule in RANGES.items():
        _check_range(full_key, value_at(cfg, full_key), rule)
    if not cfg.TRAIN.WARMUP_EPOCHS < cfg.TRAIN.EPOCHS:
        raise ConfigError(f"TRAIN.WARMUP_EPOCHS is {cfg.TRAIN.WARMUP_EPOCHS} with TRAIN.EPOCHS {cfg.TRAIN.EPOCHS}; "
                          "warm-up must be shorter than training")
    if not cfg.TRAIN.START_EPOCH < cfg.TRAIN.EPOCHS:
        raise ConfigError(f"TRAIN.START_EPOCH is {cfg.TRAIN.START_EPOCH} with TRAIN.EPOCHS {cfg.TRAIN.EPOCHS}; the "
                          "first epoch to run must come before the last (epochs count from 0)")
    _validate_auto_augment(cfg.AUG.AUTO_AUGMENT)
    for full_key in ("MODEL.NAME", "TAG"):  # each names one folder level of the output path
        name = value_at(cfg, full_key)
        if name in ("", ".", "..") or "/" in name or "\\" in name or not name.isprintable():
            raise ConfigError(f"config key {full_key} is {name!r}; it names a folder under the output root, so give "
                              "a plain name without slashes or control characters (the output root is --output)")
    if not cfg.OUTPUT.strip() or "\0" in cfg.OUTPUT:
        raise ConfigError(f"config key OUTPUT is {cfg.OUTPUT!r}; give the folder runs are written under (--output, "
                          "default output)")
    if cfg.AUG.CUTMIX_MINMAX is not None and cfg.AUG.CUTMIX_MINMAX[0] >= cfg.AUG.CUTMIX_MINMAX[1]:
        raise ConfigError(f"config key AUG.CUTMIX_MINMAX is {list(cfg.AUG.CUTMIX_MINMAX)}; give [min, max] with "
                          "min < max")
    _validate_architecture(cfg)
    _validate_simmim(cfg)


def _validate_auto_augment(policy: str) -> None:
    """AUG.AUTO_AUGMENT is "none" or a policy timm's parsers take (rand-..., augmix-..., v0, original, 3a, ...)."""
    if policy == "none":
        return
    family = policy.split("-")[0]
    if family in ("rand", "augmix"):  # timm skips a section without a number, so a typo would go unnoticed
        sections = [s for s in policy.split("-")[1:] if not (family == "rand" and s.startswith("t"))]
        unread = next((s for s in sections if not re.search(r"\d", s)), None)
        if unread is not None:
            raise ConfigError(f"config key AUG.AUTO_AUGMENT is {policy!r}: the section {unread!r} has no number, "
                              "which timm would skip; write KEY then its value, e.g. 'rand-m9-mstd0.5-inc1'")
    try:
        if policy.startswith("rand"):
            auto_augment.rand_augment_transform(policy, {})
        elif policy.startswith("augmix"):
            auto_augment.augment_and_mix_transform(policy, {})
        else:
            auto_augment.auto_augment_transform(policy, {})
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        raise ConfigError(f"config key AUG.AUTO_AUGMENT is {policy!r}, which timm does not parse "
                          f"({err or 'unknown policy'}); use e.g. 'rand-m9-mstd0.5-inc1' (the paper's), 'v0', "
                          "'original', 'augmix-m5' or 'none'") from None


def _stage_sizes(img_size: int, patch_size: int, num_stages: int) -> list[int]:
    return [img_size // patch_size // 2**i for i in range(num_stages)]


def architecture_group(cfg: CN) -> str:
    """The config group that shapes the model of MODEL.TYPE (models.build.FAMILIES)."""
    return family_group(cfg.MODEL.TYPE)


def architecture_differences(cfg: CN, published: CN, with_resolution: bool) -> list[str]:
    """`KEY ours vs theirs` for each shape-deciding key where `cfg` builds another model than `published`.

    Without `with_resolution`, image size and window may differ: fine-tuning adapts the weights to them.
    """
    if cfg.MODEL.TYPE != published.MODEL.TYPE:
        return [f"MODEL.TYPE {cfg.MODEL.TYPE} vs {published.MODEL.TYPE}"]
    group = architecture_group(cfg)
    keys = [f"MODEL.{group}.{k}" for k in ("PATCH_SIZE", "EMBED_DIM", "DEPTHS", "NUM_HEADS")]
    if with_resolution:
        keys += ["DATA.IMG_SIZE", f"MODEL.{group}.WINDOW_SIZE"]
    ours, theirs = ({k: _plain(value_at(c, k)) for k in keys} for c in (cfg, published))
    return [f"{k} {ours[k]} vs {theirs[k]}" for k in keys if ours[k] != theirs[k]]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _validate_architecture(cfg: CN) -> None:
    group_name = architecture_group(cfg)
    arch = cfg.MODEL[group_name]
    prefix = f"MODEL.{group_name}"
    if len(arch.DEPTHS) != len(arch.NUM_HEADS):
        raise ConfigError(f"{prefix}.DEPTHS and {prefix}.NUM_HEADS must be lists of the same length "
                          f"(one entry per stage); got {len(arch.DEPTHS)} and {len(arch.NUM_HEADS)}")
    if group_name == "SWINV2" and len(arch.PRETRAINED_WINDOW_SIZES) < len(arch.DEPTHS):
        raise ConfigError(f"{prefix}.PRETRAINED_WINDOW_SIZES has {len(arch.PRETRAINED_WINDOW_SIZES)} entries for "
                          f"{len(arch.DEPTHS)} stages; give one per stage (0: same as now)")
    if cfg.TRAIN.FREEZE_STAGES > len(arch.DEPTHS):
        raise ConfigError(f"TRAIN.FREEZE_STAGES {cfg.TRAIN.FREEZE_STAGES} is more than the model's "
                          f"{len(arch.DEPTHS)} stages; freeze at most {len(arch.DEPTHS)} (TRAIN.LINEAR_PROBE True "
                          "trains the head alone)")
    stride = arch.PATCH_SIZE * 2 ** (len(arch.DEPTHS) - 1)
    if cfg.DATA.IMG_SIZE % stride:
        raise ConfigError(
            f"DATA.IMG_SIZE {cfg.DATA.IMG_SIZE} is not divisible by PATCH_SIZE x 2^(stages-1) = {stride}; "
            f"use a multiple of {stride}"
        )
    for stage, (size, heads) in enumerate(zip(_stage_sizes(cfg.DATA.IMG_SIZE, arch.PATCH_SIZE, len(arch.DEPTHS)),
                                              arch.NUM_HEADS)):
        if size > arch.WINDOW_SIZE and size % arch.WINDOW_SIZE:
            raise ConfigError(
                f"{prefix}.WINDOW_SIZE {arch.WINDOW_SIZE} does not tile stage {stage} ({size}x{size} tokens at "
                f"DATA.IMG_SIZE {cfg.DATA.IMG_SIZE}); pick a window that divides {size}"
            )
        channels = arch.EMBED_DIM * 2**stage
        if channels % heads:
            raise ConfigError(f"{prefix}.NUM_HEADS[{stage}] = {heads} does not divide the {channels} channels of "
                              f"stage {stage}; pick a divisor")


# Settings of a classifier run and their neutral values, which SimMIM pre-training (no head, no labels) keeps.
_CLASSIFIER_ONLY = (("TRAIN.LAYER_DECAY", 1.0), ("TRAIN.FREEZE_STAGES", 0), ("TRAIN.LINEAR_PROBE", False))


def _validate_simmim(cfg: CN) -> None:
    """SimMIM pre-training needs mask patches that tile the image and hold whole model patches, an odd
    normalisation window, a Swin or Swin V2 encoder, and none of the settings only a classifier has."""
    target = cfg.MODEL.SIMMIM.NORM_TARGET
    if target.ENABLE and (target.PATCH_SIZE % 2 == 0 or target.PATCH_SIZE < 3):
        raise ConfigError(f"MODEL.SIMMIM.NORM_TARGET.PATCH_SIZE is {target.PATCH_SIZE}; the normalisation window "
                          "needs a centre pixel and neighbours: use an odd size of 3 or more (the reference uses 47)")
    if not cfg.MODEL.SIMMIM.PRETRAIN:
        return
    if cfg.MODEL.TYPE == "swin_mlp":
        raise ConfigError("MODEL.SIMMIM.PRETRAIN needs a swin or swinv2 encoder, and MODEL.TYPE is swin_mlp; "
                          "pre-train a swin or swinv2 model")
    group = architecture_group(cfg)
    mask, size, patch = cfg.DATA.MASK_PATCH_SIZE, cfg.DATA.IMG_SIZE, cfg.MODEL[group].PATCH_SIZE
    if size % mask:
        raise ConfigError(f"DATA.MASK_PATCH_SIZE {mask} does not tile DATA.IMG_SIZE {size}; use a divisor of {size}")
    if mask % patch:
        raise ConfigError(f"DATA.MASK_PATCH_SIZE {mask} is not a multiple of MODEL.{group}.PATCH_SIZE {patch}; "
                          f"use a multiple of {patch}")
    if cfg.EVAL_MODE or cfg.THROUGHPUT_MODE:
        raise ConfigError("--eval and --throughput measure a classifier, and this config pre-trains with SimMIM "
                          "(MODEL.SIMMIM.PRETRAIN True); fine-tune it first (--pretrained CKPT with a classification "
                          "--cfg) and evaluate that")
    for key, neutral in _CLASSIFIER_ONLY:
        if value_at(cfg, key) != neutral:
            raise ConfigError(f"{key} is for fine-tuning a classifier, and this config pre-trains with SimMIM "
                              f"(MODEL.SIMMIM.PRETRAIN True); leave it at {neutral}")
