"""Batched augmentation on whatever device the batch is on (airbench style).

Each function takes a whole batch [N, C, H, W] and draws one random choice per
sample with vectorised ops, so a GPU does the work in a handful of kernels and
the data loader only indexes a uint8 tensor.
"""

from __future__ import annotations

import torch

from .contracts import IMAGE, IMAGE2, INDEX

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


def reflect_indices(size: int, padding: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Source position of each of the ``size + 2 * padding`` positions of a reflect-padded axis.

    Reflection excludes the edge pixel (``F.pad(mode="reflect")``, torchvision's
    ``padding_mode="reflect"``): for size 32 and padding 4, position 0 reads pixel 4.
    """
    if not 0 <= padding < size:
        raise ValueError(f"reflect padding must be in [0, {size}) for an axis of {size} pixels, got {padding}")
    i = torch.arange(-padding, size + padding, device=device).abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def gather_rows_cols(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[n, c, y, x] = images[n, c, rows[n, y], cols[n, x]]`` for any dtype (uint8 too).

    Two ``index_select`` calls over whole rows (the columns are made rows by one
    transpose) instead of one 4-D advanced index: the latter builds an int64 index
    per output element and is 5-7x slower on a CPU.
    """
    n, c, h, w = images.shape
    ho, wo = rows.shape[1], cols.shape[1]
    planes = torch.arange(n * c, device=images.device).view(n, c, 1)
    by_row = images.reshape(n * c * h, w).index_select(0, (planes * h + rows[:, None, :]).reshape(-1))
    by_col = by_row.view(n, c, ho, w).transpose(2, 3).reshape(n * c * w, ho)
    out = by_col.index_select(0, (planes * w + cols[:, None, :]).reshape(-1))
    return out.view(n, c, wo, ho).transpose(2, 3)


def crop_flip_indices(
    n: int, h: int, w: int, padding: int, flip_p: float, device: torch.device | str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample source rows [N, H] and columns [N, W] of a random ``padding``-px reflect crop,
    the columns reversed for the samples drawn to be flipped (probability ``flip_p``)."""
    dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    rows = reflect_indices(h, padding, device)[dy[:, None] + torch.arange(h, device=device)]
    cols = reflect_indices(w, padding, device)[dx[:, None] + torch.arange(w, device=device)]
    if flip_p > 0:
        flip = torch.rand(n, device=device, generator=generator) < flip_p
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    return rows, cols


def random_crop(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random crop of the original size after ``padding`` px reflect padding."""
    if padding == 0:
        return images
    n, _, h, w = images.shape
    rows, cols = crop_flip_indices(n, h, w, padding, 0.0, images.device, generator)
    return gather_rows_cols(images, rows, cols)


def random_hflip(images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def to_normalized(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``normalize(to_float(images))`` in two in-place passes for uint8 input."""
    if images.dtype != torch.uint8:
        return normalize(images, mean, std)
    x = images.float()
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.mul_(1.0 / (255.0 * s)).sub_(m / s)


def alternating_flip(index: torch.Tensor, epoch: int) -> torch.Tensor:
    """Whether each sample is mirrored in ``epoch``: a fixed pseudo-random half of the samples (a hash
    of the sample index) in even epochs, the other half in odd epochs (airbench's alternating flip)."""
    first = ((index.long() * 2654435761) % 2**32) >= 2**31  # Knuth's multiplicative hash, top bit
    return first ^ bool(epoch % 2)


class CropFlip(torch.nn.Module):
    """Random crop (reflect padding) + horizontal flip + normalisation, batched.

    Crop and flip are one gather of the uint8 pixels (the flip only reverses the
    gathered columns); the conversion to float happens once, on the output.
    ``alternate_flip``: instead of a coin per sample and batch, every sample is
    mirrored in every other epoch (``alternating_flip``; airbench, Keller Jordan:
    each image is seen in both orientations over any two consecutive epochs). It
    needs the batch's sample indices and the epoch (``uses_position``).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], padding: int = 4, flip: bool = True,
                 alternate_flip: bool = False):
        super().__init__()
        self.mean, self.std, self.padding, self.flip = tuple(mean), tuple(std), padding, flip
        self.alternate_flip = alternate_flip and flip
        self.uses_position = self.alternate_flip

    def forward(self, images: torch.Tensor, index: torch.Tensor | None = None, epoch: int = 0) -> torch.Tensor:
        n, _, h, w = images.shape
        coin = 0.5 if self.flip and not self.alternate_flip else 0.0
        rows, cols = crop_flip_indices(n, h, w, self.padding, coin, images.device)
        if self.alternate_flip:
            if index is None:
                raise ValueError("alternating flip needs the batch's sample indices")
            cols = torch.where(alternating_flip(index.to(cols.device), epoch)[:, None], cols.flip(1), cols)
        return to_normalized(gather_rows_cols(images, rows, cols), self.mean, self.std)


class Normalize(torch.nn.Module):
    """No augmentation: uint8 -> normalised float."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return to_normalized(images, self.mean, self.std)


class TwoViews(torch.nn.Module):
    """Two independent draws of ``transform`` per image, as ``image`` and ``image2``: the two augmented
    views that MixMatch-style methods (DivideMix) average their guesses over."""

    def __init__(self, transform: torch.nn.Module):
        super().__init__()
        self.transform = transform

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {IMAGE: self.transform(images), IMAGE2: self.transform(images)}


def apply_transform(transform: torch.nn.Module, batch: dict, epoch: int = 0) -> dict:
    """Run ``transform`` on ``batch["image"]`` and put its result back in the batch. A transform with
    ``uses_position`` also gets the samples' ``index`` and the ``epoch``."""
    if getattr(transform, "uses_position", False):
        out = transform(batch[IMAGE], index=batch[INDEX], epoch=epoch)
    else:
        out = transform(batch[IMAGE])
    if isinstance(out, dict):
        batch.update(out)
    else:
        batch[IMAGE] = out
    return batch
