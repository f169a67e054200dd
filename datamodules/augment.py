"""Batched augmentation on whatever device the batch is on (airbench style).

Each function takes a whole batch [N, C, H, W] and draws one random choice per
sample with vectorised ops, so a GPU does the work in a handful of kernels and
the data loader only indexes a uint8 tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1] (float input is returned unchanged)."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def random_crop(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random crop of the original size after ``padding`` px reflect padding."""
    if padding == 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    dev = images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [N, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [N, 1, 1, W]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_hflip(images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class CropFlip(torch.nn.Module):
    """Random crop (reflect padding) + horizontal flip + normalisation, batched."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], padding: int = 4, flip: bool = True):
        super().__init__()
        self.mean, self.std, self.padding, self.flip = tuple(mean), tuple(std), padding, flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        x = random_crop(x, self.padding)
        if self.flip:
            x = random_hflip(x)
        return normalize(x, self.mean, self.std)


class Normalize(torch.nn.Module):
    """No augmentation: uint8 -> normalised float."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(to_float(images), self.mean, self.std)


# name -> factory(mean, std) of the training-time transform. A transform returns
# either a tensor (it replaces ``batch["image"]``) or a dict merged into the batch
# (e.g. two SimCLR views).
TRAIN_AUGMENTATIONS = {
    "crop_flip": lambda mean, std: CropFlip(mean, std),
    "none": lambda mean, std: Normalize(mean, std),
}


def apply_transform(transform: torch.nn.Module, batch: dict) -> dict:
    """Run ``transform`` on ``batch["image"]`` and put its result back in the batch."""
    out = transform(batch["image"])
    if isinstance(out, dict):
        batch.update(out)
    else:
        batch["image"] = out
    return batch
