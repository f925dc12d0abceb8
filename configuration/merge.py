"""Strict merging into a config: YAML files with BASE inheritance, stored configs, --opts pairs and the
reference's named flags, which stand for pairs.

An unknown key, a group given a value, a value of the wrong type or a key given twice in one
file is a `ConfigError` naming the key, its source and, where one is close, the key meant.
"""

import ast
import difflib
import os
import sys
from typing import Any, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN

from checkpoints.run_folder import finetune_tag
from utils import ConfigError, kind_problem


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys.extend(_all_keys(value, full + ".") if isinstance(value, CN) else [full])
    return keys


def _unknown_key_error(full_key: str, source: str, root: CN) -> ConfigError:
    known = _all_keys(root)
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
        if abs(value) <= sys.float_info.max:
            return float(value)
        raise ConfigError(f"config key {full_key} in {source} is {str(value)[:20]}..., beyond any float; give a finite "
                          "number")
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    elif type(value) is type(default):
        return value
    expected = type(default).__name__
    quote = " (YAML reads no, yes, off and on as booleans: quote the word, as in 'no')" if isinstance(
        default, str) and isinstance(value, bool) else ""
    raise ConfigError(f"config key {full_key} in {source} must be of type {expected}, got {repr(value)[:60]} "
                      f"({type(value).__name__}){quote}")


def merge_values(cfg: CN, values: dict, source: str, prefix: str = "", root: Optional[CN] = None) -> None:
    """Merge nested `values` into `cfg` (a group of `root` at `prefix`), each checked against the defaults."""
    root = cfg if root is None else root
    for name, value in values.items():
        full_key = f"{prefix}{name}"
        if name not in cfg:
            raise _unknown_key_error(full_key, source, root)
        current = cfg[name]
        if isinstance(current, CN):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full_key} in {source} is a group; give it KEY: VALUE entries")
            merge_values(current, value, source, full_key + ".", root)
        else:
            cfg[name] = _coerce(full_key, _decode(value), current, source)


def _decode(value: Any) -> Any:
    """Read numbers, lists and booleans written as strings (`1e-8`, `[2, 2]`, `True`), as yacs does."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, RecursionError, MemoryError):  # not a literal, or nested past the parser's depth
        return value


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise ConfigError(f"config file {self.name} line {key_node.start_mark.line + 1} has the key "
                                  f"{str(key)[:40]}, not a config key name; write KEY: VALUE, with keys such as TRAIN "
                                  "or BASE_LR")
            if key in seen:
                raise ConfigError(f"config file {self.name} gives {key} twice (line {key_node.start_mark.line + 1}); "
                                  "keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML `text` read safely, with a key given twice in one mapping refused; raises yaml.YAMLError."""
    loader = _StrictLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def merge_stored(cfg: CN, text: str, source: str) -> None:
    """Merge the config text a checkpoint of this project stores (`source` names the checkpoint)."""
    try:
        values = parse_yaml(text, source)
    except yaml.YAMLError:
        raise ConfigError(f"the config stored in {source} is not valid YAML; pass --cfg") from None
    if not isinstance(values, dict):
        raise ConfigError(f"the config stored in {source} is not a KEY: VALUE mapping; pass --cfg")
    merge_values(cfg, values, f"the config stored in {source}")


def merge_stored_run(cfg: CN, text: str, source: str, for_finetuning: bool) -> None:
    """Merge a stored run's config into the defaults `cfg` for a new job; OUTPUT goes back to its root folder.

    What described the run that wrote it, not its model, starts afresh. `for_finetuning` (--pretrained): a new run on
    new data, so the data source is the user's to give (--data-path), and the run gets its own folder
    (run_folder.finetune_tag), never the one it starts from.
    """
    defaults = cfg.clone()
    merge_stored(cfg, text, source)
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
            cfg.DATA[key] = defaults.DATA[key]
        cfg.MODEL.NUM_CLASSES = defaults.MODEL.NUM_CLASSES  # the new data's
        cfg.TAG = finetune_tag(cfg.TAG)


def _read_yaml(cfg_file: str) -> dict:
    if problem := kind_problem(cfg_file, "file"):
        raise ConfigError(f"config file {cfg_file} {problem}; pass an existing YAML file to --cfg")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            values = parse_yaml(f.read(), cfg_file)
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


def merge_file(cfg: CN, cfg_file: str, seen: tuple[str, ...] = ()) -> None:
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
            merge_file(cfg, os.path.join(os.path.dirname(cfg_file), base), seen + (real,))
    merge_values(cfg, values, cfg_file)


def check_pairs(opts: Sequence[str], cfg: CN) -> None:
    """--opts must alternate KEY VALUE (keys of `cfg`): name the key that lacks its value, not what ended up last."""
    keys = set(_all_keys(cfg))
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


def merge_opts(cfg: CN, opts: Sequence[str]) -> None:
    """Merge --opts KEY VALUE pairs, each value read as yacs reads it."""
    check_pairs(opts, cfg)
    for full_key, raw in zip(opts[0::2], opts[1::2]):
        *groups, name = full_key.split(".")
        node = cfg
        for group in groups:
            if group not in node or not isinstance(node[group], CN):
                raise _unknown_key_error(full_key, "--opts", cfg)
            node = node[group]
        merge_values(node, {name: raw}, "--opts", ".".join(groups) + "." if groups else "", cfg)


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


def flags_as_opts(args: Any, cfg: CN) -> list[str]:
    """The user's --opts pairs (checked alone, against the keys of `cfg`), then those of the named flags given."""
    opts = list(args.opts or ())
    check_pairs(opts, cfg)
    for attr, key in _FLAG_KEYS:
        value = getattr(args, attr, None)
        if value is not None:
            opts += [key, str(value) if not isinstance(value, str) else repr(value)]
    for attr, key, value in _SWITCH_KEYS:
        if getattr(args, attr, False):
            opts += [key, str(value)]
    if getattr(args, "amp_opt_level", None) == "O0":  # the reference's apex level for no mixed precision
        opts += ["AMP_ENABLE", "False"]
    return opts
