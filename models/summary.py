"""A text summary of a Swin-family model: parameters, MACs and the shape of every stage."""

from torch import nn

from models.simmim import SimMIM


def summarize(model: nn.Module, name: str) -> str:
    """Parameters, multiply-accumulates (as the reference counts them) and per-stage tokens, channels, heads;
    for SimMIM pre-training, its decoder and then its encoder."""
    if isinstance(model, SimMIM):
        decoder = sum(p.numel() for p in model.decoder.parameters())
        return (f"SimMIM pre-training: a pixel decoder ({decoder:,} parameters, stride {model.encoder_stride}) on "
                f"the encoder {summarize(model.encoder, name)}")
    params = sum(p.numel() for p in model.parameters())
    H, W = model.patch_embed.img_size
    lines = [f"{name}: {params:,} parameters, {model.flops() / 1e9:.2f} GMACs at {H}x{W}",
             f"{'stage':<7}{'tokens':>10}{'channels':>10}{'blocks':>8}{'heads':>7}{'window':>8}{'params':>13}"]
    for i, layer in enumerate(model.layers):
        first = layer.blocks[0]
        heads = getattr(getattr(first, "attn", None), "num_heads", getattr(first, "num_heads", 0))
        h, w = layer.input_resolution
        stage_params = sum(p.numel() for p in layer.parameters())
        lines.append(f"{i:<7}{f'{h}x{w}':>10}{layer.dim:>10}{len(layer.blocks):>8}{heads:>7}"
                     f"{first.window_size:>8}{stage_params:>13,}")
    return "\n".join(lines)
