"""A picture of what a SimMIM pre-training checkpoint learnt: original, masked input and reconstruction per image.

    python -m tools.reconstruct --resume output/simmim_pretrain_cifar10/default/ckpt_epoch_9.pth photos/ \
        --output reconstructions.png --count 8

Images go through the config's evaluation view (resize and centre crop) and get a random mask
of DATA.MASK_RATIO (the same for the same --seed). The reconstruction column shows the visible
pixels as they are and the model's prediction where the mask was; with a normalised-pixel
target the prediction is mapped back with each neighbourhood's own mean and spread.
"""

import argparse
import os
import sys
from typing import Optional

import torch
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoints.run_folder import require_output  # noqa: E402
from cli import StrictParser, positive_int, run_command, seed_int  # noqa: E402
from data.datasets import decode_image  # noqa: E402
from data.simmim import build_mask_generator  # noqa: E402
from data.transforms import build_transform  # noqa: E402
from models.simmim import SimMIM, local_statistics, pixel_mask  # noqa: E402
from tools.model_source import add_model_arguments, model_files, model_from_arguments  # noqa: E402
from tools.predict import expand_inputs  # noqa: E402
from utils import write_atomically  # noqa: E402

COLUMNS = ("original", "masked input", "reconstruction")
_TILE_PX = 128  # small images are enlarged (nearest) to about this size, so 32px ones can be seen
_HEADER_PX = 18


@torch.no_grad()
def reconstruct(model: SimMIM, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Masked inputs and reconstructions (visible pixels kept) in the images' normalised space, and the loss."""
    prediction = model.reconstruct(images, masks).float()
    loss = float(model.loss(images, masks, prediction))
    hidden = pixel_mask(masks, model.patch_size).float()  # B, 1, H, W
    if model.norm_target_window:
        mean, std = local_statistics(images, model.norm_target_window)
        prediction = prediction * std + mean
    return images * (1 - hidden), images * (1 - hidden) + prediction * hidden, loss


def to_pixels(image: torch.Tensor, scale: int) -> Image.Image:
    """A normalised C, H, W tensor as an RGB image, enlarged `scale` times."""
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None], torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    array = ((image.cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # H, W, C
    picture = Image.fromarray(array)
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def write_grid(rows: list[tuple[torch.Tensor, ...]], path: str) -> None:
    """One row per image, the COLUMNS left to right under a header."""
    size = rows[0][0].shape[-1]
    scale = max(1, _TILE_PX // size)
    tile = size * scale
    grid = Image.new("RGB", (tile * len(COLUMNS), _HEADER_PX + tile * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(COLUMNS):
        draw.text((column * tile + 4, 3), title, fill="black")
    for row, tensors in enumerate(rows):
        for column, image in enumerate(tensors):
            grid.paste(to_pixels(image, scale), (column * tile, _HEADER_PX + row * tile))
    write_atomically(path, lambda tmp: grid.save(tmp, format="PNG"))


def main(argv: Optional[list[str]] = None) -> int:
    parser = StrictParser("python -m tools.reconstruct", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    add_model_arguments(parser, "a SimMIM pre-training checkpoint")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--count", type=positive_int, default=8, help="images shown, the first ones found (default 8)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the masks (default 0)")
    args = parser.parse_args(argv)
    if not args.output.lower().endswith(".png"):
        parser.error(f"--output {args.output} is not a .png file name; give one ending in .png")
    return run_command(lambda: _reconstruct(args))


def _reconstruct(args: argparse.Namespace) -> int:
    paths = expand_inputs(args.inputs)[: args.count]
    require_output(args.output, [*paths, *model_files(args)])
    model, config, _ = model_from_arguments(args, simmim=True)
    view = build_transform(False, config)
    images = torch.stack([view(decode_image(p, p)) for p in paths])  # B, 3, H, W
    masks_of = build_mask_generator(config)
    torch.manual_seed(args.seed)
    masks = torch.stack([masks_of() for _ in paths])  # B, H/p, W/p
    masked, rebuilt, loss = reconstruct(model, images, masks)
    write_grid(list(zip(images, masked, rebuilt)), args.output)
    print(f"wrote {args.output}: {len(paths)} images, {masks_of.mask_count} of {masks_of.cells ** 2} mask patches "
          f"hidden; reconstruction loss {loss:.4f} on them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
