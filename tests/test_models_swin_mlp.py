"""models/swin_mlp.py: Swin-MLP trains and pads other input sizes.
"""

import torch
from conftest import TINY_CFG

from config import load_config
from models import build_model


def test_swin_mlp_trains_and_pads_other_sizes():
    torch.manual_seed(0)
    model = build_model(load_config(TINY_CFG, ["MODEL.TYPE", "'swin_mlp'", "MODEL.SWIN_MLP.EMBED_DIM", "16",
                                               "MODEL.SWIN_MLP.DEPTHS", "[2, 2]", "MODEL.SWIN_MLP.NUM_HEADS", "[2, 4]",
                                               "MODEL.SWIN_MLP.WINDOW_SIZE", "4"]))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.layers[0].blocks[1].spatial_mlp.weight.shape == (32, 16, 1)
    assert model.eval()(torch.randn(1, 3, 44, 36)).shape == (1, 10)
