"""Build the configured model: the one place that reads MODEL.* for the model files."""

from torch import nn
from yacs.config import CfgNode

from models.simmim import SimMIM
from models.swin_mlp import SwinMLP
from models.swin_transformer import SwinTransformer
from models.swin_transformer_v2 import SwinTransformerV2
from utils import ConfigError

# The model families MODEL.TYPE names: the config group that sizes each (MODEL.<GROUP>), and its class. The one
# list of them: the config's choices and groups come from here.
FAMILIES = {
    "swin": ("SWIN", SwinTransformer),
    "swinv2": ("SWINV2", SwinTransformerV2),
    "swin_mlp": ("SWIN_MLP", SwinMLP),
}


def family_group(model_type: str) -> str:
    """The config group (SWIN, SWINV2, SWIN_MLP) that sizes the MODEL.TYPE `model_type`."""
    return FAMILIES[model_type][0]


def build_model(config: CfgNode) -> nn.Module:
    """The model named by MODEL.TYPE, sized by its MODEL.<FAMILY> group and DATA.IMG_SIZE; with
    MODEL.SIMMIM.PRETRAIN, that model without its head as the encoder of SimMIM pre-training."""
    if config.MODEL.SIMMIM.PRETRAIN:
        target = config.MODEL.SIMMIM.NORM_TARGET
        return SimMIM(_build_family_model(config, num_classes=0), target.PATCH_SIZE if target.ENABLE else 0)
    return _build_family_model(config, config.MODEL.NUM_CLASSES)


def _build_family_model(config: CfgNode, num_classes: int) -> nn.Module:
    if config.MODEL.TYPE not in FAMILIES:
        raise ConfigError(f"MODEL.TYPE {config.MODEL.TYPE} is not known; use one of {', '.join(FAMILIES)}")
    group, model_class = FAMILIES[config.MODEL.TYPE]
    arch = config.MODEL[group]
    options = dict(
        img_size=config.DATA.IMG_SIZE,
        patch_size=arch.PATCH_SIZE,
        in_chans=arch.IN_CHANS,
        num_classes=num_classes,
        embed_dim=arch.EMBED_DIM,
        depths=tuple(arch.DEPTHS),
        num_heads=tuple(arch.NUM_HEADS),
        window_size=arch.WINDOW_SIZE,
        mlp_ratio=arch.MLP_RATIO,
        drop_rate=config.MODEL.DROP_RATE,
        drop_path_rate=config.MODEL.DROP_PATH_RATE,
        ape=arch.APE,
        patch_norm=arch.PATCH_NORM,
        use_checkpoint=config.TRAIN.USE_CHECKPOINT,
    )
    if config.MODEL.TYPE == "swin":
        options.update(qkv_bias=arch.QKV_BIAS, qk_scale=arch.QK_SCALE, attn_impl=config.MODEL.ATTN_IMPL)
    elif config.MODEL.TYPE == "swinv2":
        options.update(qkv_bias=arch.QKV_BIAS, pretrained_window_sizes=tuple(arch.PRETRAINED_WINDOW_SIZES),
                       attn_impl=config.MODEL.ATTN_IMPL)
    return model_class(**options)
