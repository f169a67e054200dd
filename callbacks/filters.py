"""First-layer filters (and optionally per-stage feature maps) as TensorBoard images.

Watching the first conv's kernels over training shows edge and colour
detectors forming (or not, e.g. when a network memorises noise). The grid has
one tile per kernel: RGB when the layer takes 3 input channels, otherwise one
grey tile per (output, input) channel pair. Each tile is min-max scaled on
its own (``scale_each``) so weak kernels stay visible; tiles are enlarged
by ``upscale`` (nearest neighbour) because 3x3 kernels are tiny on screen.

Cost: one copy of the first layer's weights every N epochs; feature maps one
forward pass of one image.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn
from torchvision.utils import make_grid, save_image

from datamodules import contracts
from lightning_modules.backbones import first_conv

from .inspection_helpers import first_network, output_dir, scale_each, tensorboard_writer


def kernel_tiles(conv: nn.Conv2d, scale: bool = True) -> tuple[torch.Tensor, int]:
    """Tiles [T, 1|3, kh, kw] in [0, 1] of a conv's kernels, and the grid's column count.

    3 input channels -> one RGB tile per output kernel (columns: ceil(sqrt(out)));
    otherwise one grey tile per (output, input) pair (one row per output kernel).
    """
    w = conv.weight.detach().float().cpu()
    out_c, in_c, kh, kw = w.shape
    if in_c == 3:
        tiles, ncols = w, math.ceil(math.sqrt(out_c))
    else:
        tiles, ncols = w.reshape(out_c * in_c, 1, kh, kw), in_c
    return (scale_each(tiles) if scale else tiles.clamp(0, 1)), ncols


def filter_grid(conv: nn.Conv2d, upscale: int = 8, padding: int = 2, title: str | None = None) -> torch.Tensor:
    """Image [3, H, W] of a conv's kernels; H = rows * (kh * upscale + padding) + padding (+ the title band)."""
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    tiles, ncols = kernel_tiles(conv)
    tiles = F.interpolate(tiles, scale_factor=upscale, mode="nearest") if upscale > 1 else tiles
    grid = make_grid(tiles, nrow=ncols, padding=padding, pad_value=1.0)
    return with_title(grid, title) if title else grid


def with_title(image: torch.Tensor, title: str, height: int = 20) -> torch.Tensor:
    """``image`` [3, H, W] in [0, 1] under a white band of ``height`` px with ``title`` in black
    (widened to fit the text, so a small grid keeps its title readable)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=height - 6)
    text_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 8
    _, h, w = image.shape
    canvas = Image.new("RGB", (max(w, text_w), h + height), "white")
    canvas.paste(Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()), (0, height))
    ImageDraw.Draw(canvas).text((4, 2), title, fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def stage_outputs(features: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """Feature maps of ``image`` [1, C, H, W] at the end of each stage (each spatial resolution).

    Hooks the direct children of ``features``; among the 4-D outputs, keeps the
    last one of each run of equal spatial size, i.e. just before every down-sampling
    (1x1 outputs of a global pool are left out).
    """
    outputs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outputs.append(o.detach()) if o.dim() == 4 else None)
        for m in features.children()
    ]
    try:
        with torch.no_grad():
            features(image)
    finally:
        for h in hooks:
            h.remove()
    stages: list[torch.Tensor] = []
    for o in outputs:
        if o.shape[-2:].numel() == 1:  # pooled to 1x1: nothing spatial left to show
            continue
        if stages and stages[-1].shape[-2:] == o.shape[-2:]:
            stages[-1] = o
        else:
            stages.append(o)
    return stages


class FilterVisualisation(Callback):
    """Logs ``filters/first_conv`` at the start of training and every N epochs.

    Args:
        every_n_epochs: interval in epochs (the start is always logged).
        upscale: nearest-neighbour enlargement of each kernel tile.
        feature_maps: also log ``feature_maps/stage{i}`` of one fixed test image.
        image_index: which test image (position in the datamodule's test set).
        max_channels: feature-map channels shown per stage.
        save_png: also write ``filters_epoch{E}.png`` into the run folder.
    """

    def __init__(
        self, every_n_epochs: int = 5, upscale: int = 8, feature_maps: bool = False, image_index: int = 0,
        max_channels: int = 16, save_png: bool = True,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        if max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {max_channels}")
        self.every_n_epochs, self.upscale, self.feature_maps = every_n_epochs, upscale, feature_maps
        self.image_index, self.max_channels, self.save_png = image_index, max_channels, save_png
        self.last_grid: torch.Tensor | None = None
        self._image: torch.Tensor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module, f"epoch{trainer.current_epoch + 1:03d}")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, label: str) -> None:
        if not trainer.is_global_zero:
            return
        conv = first_conv(pl_module)
        if conv is None:
            if self.last_grid is None:
                warnings.warn(f"{type(self).__name__}: the model has no Conv2d layer; nothing to show")
                self.last_grid = torch.empty(0)
            return
        when = "start of training" if label == "start" else f"after epoch {trainer.current_epoch + 1}"
        grid = filter_grid(conv, self.upscale, title=f"first conv {tuple(conv.weight.shape)}, {when}")
        self.last_grid = grid
        writer = tensorboard_writer(trainer, type(self).__name__)
        if writer is not None:
            writer.add_image("filters/first_conv", grid, trainer.global_step)
        out = output_dir(trainer)
        if self.save_png and out is not None:
            save_image(grid, out / f"filters_{label}.png")
        if self.feature_maps and writer is not None:
            self._log_feature_maps(trainer, pl_module, writer)

    def _fixed_image(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
        if self._image is None:
            dm = trainer.datamodule
            transform = contracts.require(dm, "eval_transform", type(self).__name__)
            try:
                ds = dm.test_dataloader().dataset
                raw = ds[self.image_index][contracts.IMAGE][None]
            except Exception as err:  # a datamodule without a test set: say so, keep training
                warnings.warn(f"{type(self).__name__}: no fixed test image for feature maps ({err})")
                self.feature_maps = False
                return None
            self._image = transform(raw)
        return self._image.to(pl_module.device)

    def _log_feature_maps(self, trainer: pl.Trainer, pl_module: pl.LightningModule, writer) -> None:
        image = self._fixed_image(trainer, pl_module)
        features = getattr(first_network(pl_module) or pl_module, "features", None)
        if image is None or features is None:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            stages = stage_outputs(features, image)
        finally:
            pl_module.train(was_training)
        for i, fmap in enumerate(stages):
            maps = scale_each(fmap[0, : self.max_channels, None].float().cpu())  # [K, 1, h, w]
            up = max(1, 32 // maps.shape[-1])
            maps = F.interpolate(maps, scale_factor=up, mode="nearest") if up > 1 else maps
            grid = make_grid(maps, nrow=math.ceil(math.sqrt(len(maps))), padding=2, pad_value=1.0)
            h, w = fmap.shape[-2:]
            writer.add_image(f"feature_maps/stage{i}_{h}x{w}", grid, trainer.global_step)
