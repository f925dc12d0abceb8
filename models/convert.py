"""State-dict converters between the reference layout (this project's) and timm's and torchvision's.

Reference checkpoints downsample at the end of a stage (`layers.i.downsample`), timm at the
start of the next (`layers.{i+1}.downsample`) and names its classifier `head.fc`; torchvision
numbers patch embedding, stages and mergings as `features.0`, `features.1`, `features.2`, ...
Derived buffers (index tables, shift masks) are dropped: every model recomputes its own.
"""

import re

import torch

from models.pretrained import DERIVED_BUFFERS
from models.window_ops import relative_position_index

StateDict = dict[str, torch.Tensor]
SIMMIM_ENCODER = "encoder."  # the prefix of the encoder's names in a SimMIM pre-training state


def _without_derived(state: StateDict) -> StateDict:
    return {k: v for k, v in state.items() if not k.endswith(DERIVED_BUFFERS)}


def _move_mergings_and_head(state: StateDict, stage_offset: int, head_from: str, head_to: str) -> StateDict:
    """Derived buffers dropped, `layers.i.downsample` renumbered by `stage_offset`, the head prefix renamed."""
    out = {}
    for key, value in _without_derived(state).items():
        key = re.sub(r"^layers\.(\d+)\.downsample",
                     lambda m: f"layers.{int(m.group(1)) + stage_offset}.downsample", key)
        out[head_to + key[len(head_from):] if key.startswith(head_from) else key] = value
    return out


def detect_layout(state: StateDict) -> str:
    """`reference`, `timm`, `torchvision` or `simmim` from a Swin state dict's names; `unknown` when they do not tell
    or name no Swin stages.

    The reference merges at the end of a stage (there is a `layers.0.downsample`), timm at the start
    of the next (there is none), and only timm names its classifier `head.fc`. SimMIM pre-training
    keeps the whole network under `encoder.`, beside its `decoder.`.
    """
    if any(k.startswith(SIMMIM_ENCODER) for k in state):
        return "simmim"
    if any(k.startswith("features.") for k in state):
        return "torchvision"
    if not any(re.match(r"layers\.\d+\.blocks\.\d+\.", k) for k in state):
        return "unknown"  # no Swin stages: another architecture (a ViT has blocks.N and head too)
    merges = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}
    if "head.fc.weight" in state or (merges and 0 not in merges):
        return "timm"
    if "head.weight" in state or 0 in merges:
        return "reference"
    return "unknown"


def from_simmim(state: StateDict) -> StateDict:
    """A SimMIM pre-training state's encoder under the classifier's names: the `encoder.` prefix stripped, and
    the decoder and mask token, which only pre-training uses, left out."""
    return {k[len(SIMMIM_ENCODER):]: v for k, v in state.items()
            if k.startswith(SIMMIM_ENCODER) and k != SIMMIM_ENCODER + "mask_token"}


def with_current_v2_names(state: StateDict) -> tuple[StateDict, int]:
    """Early Swin V2 files (the reference's SimMIM releases) call the continuous position bias MLP `rpe_mlp`; the
    model names it `cpb_mlp`. Returns the renamed state and how many keys changed."""
    renamed = {k.replace(".rpe_mlp.", ".cpb_mlp."): v for k, v in state.items()}
    return renamed, sum(".rpe_mlp." in k for k in state)


def to_timm(state: StateDict) -> StateDict:
    """Reference (V1 or V2) names to timm's `swin_*` / `swinv2_*` names."""
    return _move_mergings_and_head(state, 1, "head.", "head.fc.")


def from_timm(state: StateDict) -> StateDict:
    """timm's `swin_*` / `swinv2_*` names back to the reference names."""
    return _move_mergings_and_head(state, -1, "head.fc.", "head.")


_TV_PATCH = (("patch_embed.proj.", "features.0.0."), ("patch_embed.norm.", "features.0.2."))
_TV_MLP = ((".mlp.fc1.", ".mlp.0."), (".mlp.fc2.", ".mlp.3."))


def _split_qkv_bias(state: StateDict) -> StateDict:
    """torchvision's V2 `qkv.bias` as the reference's `q_bias` and `v_bias` (its key third is zeroed in use)."""
    out = {}
    for key, value in state.items():
        if key.endswith("attn.qkv.bias") and key.replace("qkv.bias", "logit_scale") in state:
            q_bias, _, v_bias = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = q_bias, v_bias
        else:
            out[key] = value
    return out


def _join_qkv_bias(state: StateDict) -> StateDict:
    """The reference's V2 `q_bias` and `v_bias` as torchvision's one `qkv.bias`, with a zero key third."""
    out = {}
    for key, value in state.items():
        if key.endswith("attn.q_bias"):
            v_bias = state[key.replace("q_bias", "v_bias")]
            out[key.replace("q_bias", "qkv.bias")] = torch.cat([value, torch.zeros_like(value), v_bias])
        elif not key.endswith("attn.v_bias"):
            out[key] = value
    return out


def _with_window_index(state: StateDict) -> StateDict:
    """`state` with each attention's relative position index, which torchvision's models keep in their state dicts
    (a file without it does not load there); a state converted from timm's has none. A V1 block's window shows in
    its bias table ((2W-1)^2 rows), a V2 block's only in its coordinate table (1, 2W-1, 2W-1, 2), which torchvision
    needs too: a V2 state without it is a ValueError saying so."""
    out = dict(state)
    for key, value in state.items():
        prefix = key.rpartition(".")[0] + "."
        if key.endswith("attn.relative_position_bias_table"):
            window = (round(value.shape[0] ** 0.5) + 1) // 2
        elif key.endswith("attn.relative_coords_table"):
            window = (value.shape[1] + 1) // 2
        elif key.endswith("attn.logit_scale") and prefix + "relative_coords_table" not in state:
            raise ValueError(f"has no {prefix}relative_coords_table, which torchvision's Swin V2 keeps and only the "
                             "window size tells (timm's files leave it out); convert a checkpoint written by this "
                             "project, which holds it")
        else:
            continue
        out.setdefault(prefix + "relative_position_index", relative_position_index((window, window)))
    return out


def to_torchvision(state: StateDict) -> StateDict:
    """Reference V1 or V2 names to torchvision's `swin_t/s/b` / `swin_v2_t/s/b` names, with the index buffers that
    torchvision's state dicts hold."""
    out = {}
    for key, value in _join_qkv_bias(_with_window_index(state)).items():
        if key.endswith("attn_mask"):
            continue
        if key.endswith("relative_position_index"):
            value = value.reshape(-1)  # torchvision keeps the index flat
        for ours, theirs in _TV_PATCH + _TV_MLP:
            key = key.replace(ours, theirs)
        key = re.sub(r"^layers\.(\d+)\.blocks\.", lambda m: f"features.{2 * int(m.group(1)) + 1}.", key)
        out[re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"features.{2 * int(m.group(1)) + 2}.", key)] = value
    return out


def from_torchvision(state: StateDict) -> StateDict:
    """torchvision's `swin_t/s/b` / `swin_v2_t/s/b` names back to the reference V1 / V2 names."""
    out = {}
    for key, value in _split_qkv_bias(_without_derived(state)).items():
        for ours, theirs in _TV_PATCH + _TV_MLP:
            key = key.replace(theirs, ours)

        def stage(match: re.Match) -> str:
            index = int(match.group(1))
            return f"layers.{(index - 1) // 2}.blocks.{match.group(2)}." if index % 2 else \
                f"layers.{(index - 2) // 2}.downsample.{match.group(2)}."

        out[re.sub(r"^features\.(\d+)\.(\w+)\.", stage, key)] = value
    return out
