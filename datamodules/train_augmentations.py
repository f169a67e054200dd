"""The training augmentations a datamodule's ``augmentation`` option names.

The registry lives apart from ``augment.py`` (the batched building blocks) and ``simclr_augment.py``
(which builds on them), so that imports go one way: this module imports both, neither imports it.
"""

from __future__ import annotations

from typing import Callable

import torch

from .augment import CropFlip, Normalize, TwoViews
from .simclr_augment import SimCLRAugment

# name -> factory(mean, std) of the training-time transform. A transform returns
# either a tensor (it replaces ``batch["image"]``) or a dict merged into the batch
# (e.g. two SimCLR views).
TRAIN_AUGMENTATIONS: dict[str, Callable[[tuple[float, ...], tuple[float, ...]], torch.nn.Module]] = {
    "crop_flip": lambda mean, std: CropFlip(mean, std),
    "crop2_flip": lambda mean, std: CropFlip(mean, std, padding=2),  # airbench's 2 px translation
    "crop2_altflip": lambda mean, std: CropFlip(mean, std, padding=2, alternate_flip=True),  # and its flip
    "none": lambda mean, std: Normalize(mean, std),
    "crop_flip_twice": lambda mean, std: TwoViews(CropFlip(mean, std)),  # ``image`` and ``image2`` (DivideMix)
    "crop2_flip_twice": lambda mean, std: TwoViews(CropFlip(mean, std, padding=2)),  # the same, fast recipe
    "simclr": lambda mean, std: SimCLRAugment(mean, std),  # two views {"view1", "view2"}
}
