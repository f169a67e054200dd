"""Initialise each backbone's first conv by patch whitening of training images, for any method.

airbench (Keller Jordan, github.com/KellerJordan/cifar10-airbench, ``legacy/airbench94.py``)
initialises its 2x2 first conv from the first 5,000 training images
(``lightning_modules.whitening``), keeps those filters fixed and trains the
conv's bias for the first 3 epochs only. As a callback it works for every
method (one backbone, two networks, ...) and every backbone whose first conv
has ``2 * C * kh * kw`` channels (``backbones.AirbenchNet``).

A module fine-tuned from a pretrained encoder (the shared ``init_from`` option)
keeps the first conv it loaded: the layers above it were trained on those
filters, and whitening recomputed from another training split (or with an
eigenvector's sign flipped) would no longer match them. Its bias still trains
for ``bias_epochs`` only.

The filters are computed in ``setup``: before the strategy wraps the model, so
DDP broadcasts rank 0's filters to every process, and before a checkpoint is
restored, so a resumed run keeps its saved weights. The bias is frozen after
``bias_epochs`` by dropping its gradient before each optimiser step (the
optimiser then skips it, momentum and weight decay included); changing
``requires_grad`` instead would break DDP's gradient reducer.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from datamodules import contracts as c
from lightning_modules.backbones import first_conv
from lightning_modules.method_base import MethodBase, find_backbones
from lightning_modules.whitening import init_patch_whitening


class PatchWhitening(pl.Callback):
    """Args:
    num_images: how many training images (the first of the training split) the patches come from.
    eps: added to each eigenvalue before the inverse square root.
    bias_epochs: epochs during which the first conv's bias trains (None: always).
    modules: attribute names of the backbones to treat (default: every child ``Backbone``).
    """

    def __init__(self, num_images: int = 5000, eps: float = 5e-4, bias_epochs: int | None = 3,
                 modules: list[str] | None = None):
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if bias_epochs is not None and bias_epochs < 0:
            raise ValueError(f"bias_epochs must be >= 0 or None, got {bias_epochs}")
        self.num_images, self.eps, self.bias_epochs, self.modules = num_images, eps, bias_epochs, modules
        self.convs: dict[str, torch.nn.Conv2d] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        for name in ("training_images", "eval_transform"):
            c.require(dm, name, "PatchWhitening")
        pretrained = pl_module.option("init_from") if isinstance(pl_module, MethodBase) else None
        if pretrained:
            rank_zero_info(f"PatchWhitening: the first conv comes from {pretrained}; kept, not re-whitened")
        else:
            images, _ = dm.training_images()
            images = dm.eval_transform(images[: self.num_images].to(pl_module.device))
        for name, backbone in find_backbones(pl_module, self.modules).items():
            conv = first_conv(backbone)
            if conv is None:
                raise ValueError(f"PatchWhitening: backbone {name!r} has no Conv2d to initialise")
            if not pretrained:
                init_patch_whitening(conv, images, self.eps)
            self.convs[name] = conv

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if self.bias_epochs is None or trainer.current_epoch < self.bias_epochs:
            return
        for conv in self.convs.values():
            if conv.bias is not None:
                conv.bias.grad = None
