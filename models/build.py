"""Build the configured model: the one place that reads MODEL.* for the model files."""

from torch import nn
from yacs.config import CfgNode

from models.swin_transformer import SwinTransformer


def build_model(config: CfgNode) -> nn.Module:
    """The model named by MODEL.TYPE, sized by its MODEL.<FAMILY> group and DATA.IMG_SIZE."""
    model_type = config.MODEL.TYPE
    if model_type == "swin":
        arch = config.MODEL.SWIN
        return SwinTransformer(
            img_size=config.DATA.IMG_SIZE,
            patch_size=arch.PATCH_SIZE,
            in_chans=arch.IN_CHANS,
            num_classes=config.MODEL.NUM_CLASSES,
            embed_dim=arch.EMBED_DIM,
            depths=tuple(arch.DEPTHS),
            num_heads=tuple(arch.NUM_HEADS),
            window_size=arch.WINDOW_SIZE,
            mlp_ratio=arch.MLP_RATIO,
            qkv_bias=arch.QKV_BIAS,
            qk_scale=arch.QK_SCALE,
            drop_rate=config.MODEL.DROP_RATE,
            drop_path_rate=config.MODEL.DROP_PATH_RATE,
            ape=arch.APE,
            patch_norm=arch.PATCH_NORM,
            use_checkpoint=config.TRAIN.USE_CHECKPOINT,
            attn_impl=config.MODEL.ATTN_IMPL,
        )
    raise NotImplementedError(f"MODEL.TYPE {model_type} is not built yet (issue #6)")
