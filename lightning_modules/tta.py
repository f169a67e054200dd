"""Test-time augmentation by flips and one-pixel translations (airbench's ``tta_level``).

airbench (Keller Jordan, github.com/KellerJordan/cifar10-airbench, ``legacy/airbench94.py``)
averages the logits of the image and its mirror image (``flip``), and, for
``flip_translate``, weighs that pair 1/2 and the mirrored pairs of the image
shifted one pixel up-left and one pixel down-right (reflect padding) 1/4 each.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

TTA = Literal["none", "flip", "flip_translate"]
TTA_LEVELS = ("none", "flip", "flip_translate")


def check_tta(tta: str) -> None:
    if tta not in TTA_LEVELS:
        raise ValueError(f"unknown tta {tta!r}; allowed: {', '.join(TTA_LEVELS)}")


def flip_logits(net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    return 0.5 * (net(images) + net(images.flip(-1)))


def tta_logits(net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: str) -> torch.Tensor:
    """Logits of ``net`` on ``images`` [N, C, H, W] averaged over the views of ``tta``."""
    check_tta(tta)
    if tta == "none":
        return net(images)
    if tta == "flip":
        return flip_logits(net, images)
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :h, :w], padded[..., 2:, 2:]
    shifted = 0.5 * (flip_logits(net, up_left) + flip_logits(net, down_right))
    return 0.5 * flip_logits(net, images) + 0.5 * shifted
