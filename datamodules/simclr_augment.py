"""SimCLR's two-view augmentation, batched on the batch's device.

The reference is lightly's per-sample ``SimCLRTransform`` as lightly's CIFAR-10
benchmark configures it (``input_size=32, cj_strength=0.5, gaussian_blur=0.0``):

    RandomResizedCrop(32, scale=(0.08, 1), ratio=(3/4, 4/3))
    RandomHorizontalFlip(0.5)
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)   # 0.5 x (0.8, 0.8, 0.8, 0.2)
    RandomGrayscale(0.2)
    (no Gaussian blur on 32x32 images)

Here every sample of a batch draws its own parameters with the same
distributions as torchvision's ``get_params`` (10 tries of area/log-ratio, then
the central-crop fallback; colour-jitter factors and a random order of the four
jitter operations per sample), and the whole batch is transformed with a few
vectorised ops: one ``grid_sample`` does crop, resize (bilinear) and flip at
once; the colour operations follow torchvision's tensor
formulas. Data loaders then only index a uint8 tensor, so there is no per-sample
PIL work (see bench/bench_simclr_augment.py for the speed-up).

Differences from the PIL reference, by design: resizing is bilinear without
anti-aliasing (crops are never larger than the output, so it only upsamples),
and colours stay in float instead of being rounded to uint8 after every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import normalize, to_float
from .contracts import VIEW1, VIEW2

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


@dataclass(frozen=True)
class SimCLRAugmentConfig:
    """Parameter ranges of one view; defaults = lightly's SimCLRTransform for CIFAR (see module docstring)."""

    scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift drawn from [-hue, hue] (fraction of the colour circle)
    grey_prob: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("hflip_prob", "jitter_prob", "grey_prob"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1) (factor drawn from [1 - v, 1 + v]), got {v}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")


@dataclass
class ViewParams:
    """Random parameters of one view for a batch of N images (all tensors have N rows)."""

    boxes: torch.Tensor  # [N, 4] float: top, left, height, width of the crop in pixels
    flip: torch.Tensor  # [N] bool
    jitter: torch.Tensor  # [N] bool: colour jitter applied
    order: torch.Tensor  # [N, 4] long: permutation of (brightness, contrast, saturation, hue)
    factors: torch.Tensor  # [N, 4] float: brightness, contrast, saturation factors and hue shift
    grey: torch.Tensor  # [N] bool


def sample_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    device: torch.device | str = "cpu", generator: torch.Generator | None = None, tries: int = 10,
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for ``n`` images at once -> [N, 4] (top, left, h, w).

    Each image tries ``tries`` (area, log-uniform ratio) draws and keeps the first
    that fits; images where none fits get torchvision's central-crop fallback.
    """
    area = height * width
    u = torch.rand(n, tries, device=device, generator=generator)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, device=device, generator=generator))
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.int().argmax(1, keepdim=True)  # first successful try (0 when none: masked below)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)
    # fallback: central crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.floor(torch.rand(n, device=device, generator=generator) * (height - h + 1))
    left = torch.floor(torch.rand(n, device=device, generator=generator) * (width - w + 1))
    top = torch.where(found, top, torch.full_like(top, 0.0) + ((height - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, 0.0) + ((width - fw) // 2))
    return torch.stack([top, left, h, w], 1)


def sample_view_params(
    n: int, height: int, width: int, cfg: SimCLRAugmentConfig,
    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> ViewParams:
    """Draw every random choice of one view for ``n`` images (torchvision's distributions)."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)

    factors = torch.stack(
        [
            uniform(1 - cfg.brightness, 1 + cfg.brightness),
            uniform(1 - cfg.contrast, 1 + cfg.contrast),
            uniform(1 - cfg.saturation, 1 + cfg.saturation),
            uniform(-cfg.hue, cfg.hue),
        ],
        1,
    )
    return ViewParams(
        boxes=sample_crop_boxes(n, height, width, cfg.scale, cfg.ratio, device, generator),
        flip=torch.rand(n, device=device, generator=generator) < cfg.hflip_prob,
        jitter=torch.rand(n, device=device, generator=generator) < cfg.jitter_prob,
        order=torch.rand(n, 4, device=device, generator=generator).argsort(1),  # a uniform random permutation
        factors=factors,
        grey=torch.rand(n, device=device, generator=generator) < cfg.grey_prob,
    )


def resized_crop_flip(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop ``boxes`` (top, left, h, w in pixels) out of each image, resize to the input size
    (bilinear) and mirror where ``flip``: one ``grid_sample``.

    Equal to cropping and then ``F.interpolate(..., mode="bilinear", align_corners=False)``:
    output pixel centres map to ``left + (u + 0.5) * w / W - 0.5``, clamped into the crop so
    that edge pixels repeat (nothing is read from outside the crop). (``grid_sample`` measured
    about 4x faster on CPU than the same map as two batched matmuls.)
    """
    n, _, height, width = images.shape
    dev, dt = images.device, images.dtype
    top, left, h, w = boxes.to(dt).unbind(1)
    u = torch.arange(width, device=dev, dtype=dt).expand(n, width)
    u = torch.where(flip[:, None], width - 1 - u, u)
    v = torch.arange(height, device=dev, dtype=dt).expand(n, height)
    xs = left[:, None] + (u + 0.5) * (w / width)[:, None] - 0.5  # source pixel coordinates [N, W]
    ys = top[:, None] + (v + 0.5) * (h / height)[:, None] - 0.5  # [N, H]
    xs = torch.minimum(torch.maximum(xs, left[:, None]), (left + w - 1)[:, None])
    ys = torch.minimum(torch.maximum(ys, top[:, None]), (top + h - 1)[:, None])
    gx = (2 * xs + 1) / width - 1  # grid_sample's normalised coordinates (align_corners=False)
    gy = (2 * ys + 1) / height - 1
    grid = torch.stack([gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grey(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma with torchvision's weights."""
    wr, wg, wb = GREY_WEIGHTS
    return (wr * images[:, 0:1]).add_(images[:, 1:2], alpha=wg).add_(images[:, 2:3], alpha=wb)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * a + (1 - factor) * b, clamped to [0, 1] (torchvision's ``_blend``)."""
    f = factor.view(-1, 1, 1, 1).to(a.dtype)
    return torch.addcmul(b * (1 - f), a, f).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, grey(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, grey(x), f)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by its ``shift`` (fraction of the colour circle); same values as
    torchvision's RGB -> HSV -> RGB (hexagonal hue; ties of the maximum resolved r, then g, then b).

    Written without the HSV round trip: with M = max, m = min, chroma C = M - m and
    H6 = 6 * hue, each output channel is ``M - C * clamp(2 - |k - 2|, 0, 1)`` with
    ``k = (n + H6) mod 6``, n = 5, 3, 1 for r, g, b (the closed form of HSV -> RGB, since
    v = M and v * s = C), and H6 = (g - b) / C, 2 + (b - r) / C or 4 + (r - g) / C
    depending on which channel holds the maximum.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc = x.amax(1, keepdim=True)
    chroma = maxc - x.amin(1, keepdim=True)
    inv = 1.0 / chroma.clamp(min=1e-12)  # C = 0: all channels equal, numerators 0, hue irrelevant
    # which channel holds the maximum, as 0/1 floats (arithmetic selection: torch.where is slow on CPU)
    is_r = (r == maxc).to(x.dtype)
    is_g = (g == maxc).to(x.dtype).mul_(1 - is_r)
    is_b = 1 - is_r - is_g
    h6 = (g - b).mul_(is_r).addcmul_(b - r + 2.0 * chroma, is_g).addcmul_(r - g + 4.0 * chroma, is_b).mul_(inv)
    t = h6.add_(6.0 * shift.view(-1, 1, 1, 1).to(x.dtype)) + _HUE_OFFSETS.to(x.device, x.dtype)  # [N, 3, H, W]
    k = t.sub_(torch.floor(t / 6.0).mul_(6.0))  # t mod 6
    weight = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0, 1)
    return torch.addcmul(maxc, chroma, weight, value=-1.0)


_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: torch.Tensor, apply: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter with per-sample factors and per-sample operation order.

    In round r each selected image gets operation ``order[:, r]``; each operation
    runs once per round on just the images that need it (index, op, write back),
    so the total work is one pass of each operation over the jittered images.
    """
    x = x.clone()
    for r in range(4):
        for op_id, op in enumerate(JITTER_OPS):
            idx = torch.nonzero(apply & (order[:, r] == op_id)).squeeze(1)
            if idx.numel():
                x[idx] = op(x[idx], factors[idx, op_id])
    return x


def random_grey(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the images where ``mask`` by their luma on all three channels (in place)."""
    idx = torch.nonzero(mask).squeeze(1)
    if idx.numel():
        x[idx] = grey(x[idx]).expand(-1, 3, -1, -1)
    return x


def apply_view(images: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """One augmented view in [0, 1] (float) of a batch, given its parameters."""
    x = resized_crop_flip(to_float(images), params.boxes, params.flip)
    x = color_jitter(x, params.jitter, params.order, params.factors)
    return random_grey(x, params.grey)


class SimCLRAugment(torch.nn.Module):
    """Two independent views of every image, normalised: ``{"view1": [N,3,H,W], "view2": ...}``.

    Registered in ``datamodules.train_augmentations.TRAIN_AUGMENTATIONS`` as ``simclr``; the
    datamodule merges the returned dict into the batch (``image`` stays the
    un-augmented uint8 batch).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], config: SimCLRAugmentConfig | None = None):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        self.config = config or SimCLRAugmentConfig()

    def view(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, c, h, w = images.shape
        if c != 3:
            raise ValueError(f"SimCLR augmentation needs RGB images [N, 3, H, W], got shape {tuple(images.shape)}")
        params = sample_view_params(n, h, w, self.config, images.device, generator)
        return normalize(apply_view(images, params), self.mean, self.std)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {VIEW1: self.view(images), VIEW2: self.view(images)}
