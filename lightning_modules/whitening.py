"""Patch-whitening initialisation of a first convolution (airbench; Keller Jordan,
github.com/KellerJordan/cifar10-airbench, ``legacy/airbench94.py``).

The conv's filters become the eigenvectors of the second-moment matrix of the
training images' patches, each divided by the square root of its eigenvalue
(plus ``eps``), in both signs: the layer's outputs on those patches are
decorrelated with unit variance, which lets a small network train fast. The
conv must have ``2 * C * kh * kw`` output channels (24 for a 2x2 RGB conv).
"""

from __future__ import annotations

import torch
from torch import nn


def image_patches(images: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Every ``kh x kw`` patch (stride 1, no padding) of ``images`` [N, C, H, W] as rows [P, C * kh * kw]."""
    kh, kw = kernel_size
    n, c = images.shape[:2]
    patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1)  # [N, C, H', W', kh, kw]
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)


def whitening_filters(images: torch.Tensor, kernel_size: tuple[int, int], eps: float = 5e-4) -> torch.Tensor:
    """Filters [2 * C * kh * kw, C, kh, kw]: eigenvectors of the patches' second moment scaled by
    ``(eigenvalue + eps) ** -0.5``, largest eigenvalue first, then the same filters negated."""
    patches = image_patches(images, kernel_size).double()
    moment = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
    order = eigenvalues.argsort(descending=True)
    scaled = eigenvectors[:, order].T / torch.sqrt(eigenvalues[order] + eps)[:, None]
    c = images.shape[1]
    filters = scaled.reshape(-1, c, *kernel_size).float()
    return torch.cat([filters, -filters])


def init_patch_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set ``conv.weight`` to the whitening filters of ``images`` (normalised float [N, C, H, W])."""
    c, kh, kw = conv.weight.shape[1:]
    expected = 2 * c * kh * kw
    if conv.out_channels != expected or conv.groups != 1:
        raise ValueError(
            f"patch whitening needs a conv with {expected} output channels (2 x {c} x {kh} x {kw}) and groups 1, "
            f"got {conv.out_channels} channels and groups {conv.groups}"
        )
    if images.dim() != 4 or images.shape[1] != c:
        raise ValueError(f"patch whitening needs images [N, {c}, H, W], got shape {tuple(images.shape)}")
    with torch.no_grad():
        conv.weight.copy_(whitening_filters(images, (kh, kw), eps).to(conv.weight))
