"""The first-layer filter figure is readable: each 3x3 kernel a 24 px block (nearest neighbour),
white gaps between kernels, and a title naming the layer and the epoch."""

from __future__ import annotations

import torch

from callbacks.filters import filter_grid, kernel_tiles
from lightning_modules.backbones import CNN, first_conv


def test_kernels_are_24px_blocks_with_gaps_under_a_title():
    torch.manual_seed(0)
    conv = first_conv(CNN(width=0.25))  # 32 kernels of 3x3, 3 input channels -> 6 columns, 6 rows
    band, tile, pad = 20, 24, 2
    grid = filter_grid(conv, upscale=8, padding=2, title="first conv, after epoch 3")
    assert grid.shape[1] == band + 6 * (tile + pad) + pad
    assert grid.shape[2] >= 6 * (tile + pad) + pad
    tiles, ncols = kernel_tiles(conv)
    body = grid[:, band:, :]
    for k in (0, 7, 31):
        r, c = divmod(k, ncols)
        y, x = pad + r * (tile + pad), pad + c * (tile + pad)
        block = body[:, y:y + tile, x:x + tile]
        # nearest neighbour: each kernel weight is an 8x8 square of one colour (to 8-bit rounding)
        expected = tiles[k].repeat_interleave(8, 1).repeat_interleave(8, 2)
        assert torch.allclose(block, expected, atol=1 / 255 + 1e-6), k
        assert torch.all(body[:, y - pad:y, x:x + tile] == 1.0)  # white gap above the kernel
        assert torch.all(body[:, y:y + tile, x - pad:x] == 1.0)  # and to its left
    title = grid[:, :band, :]
    assert (title < 0.5).any(), "no text in the title band"
    other = filter_grid(conv, upscale=8, padding=2, title="first conv, after epoch 9")[:, :band, :]
    assert not torch.equal(title, other[:, :, : title.shape[2]])  # the epoch is in the title


def test_without_title_the_grid_is_unchanged():
    conv = first_conv(CNN(width=0.25))
    assert filter_grid(conv, upscale=8).shape == (3, 6 * 26 + 2, 6 * 26 + 2)
