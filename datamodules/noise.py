"""Label-noise models as pure functions.

Every synthetic model is "with probability r, replace the label by a draw from a
flip distribution F": the transition matrix is then T = (1 - r) I + r F, and the
draw is recorded so tests can tell *selected* samples from *changed* ones (the
`uniform` model can select a sample and give it its true label back).

Conventions:
- ``symmetric``: F picks a different class uniformly (co-teaching, CIFAR-N).
- ``uniform``:   F picks any class uniformly, the true one included (MW-Net).
- ``pairflip``:  F sends c to c + 1 mod C (co-teaching).
- ``asymmetric``: F follows a class map (CIFAR-10: truck->automobile,
  bird->airplane, deer->horse, cat<->dog; CIFAR-100: next class within the same
  superclass, cyclically); classes without an entry keep their label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

SYNTHETIC_NOISE_TYPES = ("clean", "symmetric", "uniform", "pairflip", "asymmetric")
NOISE_TYPES = SYNTHETIC_NOISE_TYPES + ("human",)

# CIFAR-10 class ids: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog,
# 6 frog, 7 horse, 8 ship, 9 truck.
CIFAR10_ASYMMETRIC_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def check_noise_rate(rate: float) -> float:
    """Return ``rate`` or raise if it is not a probability in [0, 1)."""
    if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {rate!r}")
    return float(rate)


def check_noise_type(noise_type: str) -> str:
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"unknown noise_type {noise_type!r}; allowed: {', '.join(NOISE_TYPES)}")
    return noise_type


def superclass_successor_map(fine_to_coarse: Sequence[int]) -> dict[int, int]:
    """Map each fine class to the next fine class (by id) of its superclass, cyclically."""
    groups: dict[int, list[int]] = {}
    for fine, coarse in enumerate(fine_to_coarse):
        groups.setdefault(int(coarse), []).append(fine)
    mapping = {}
    for members in groups.values():
        for i, fine in enumerate(members):
            mapping[fine] = members[(i + 1) % len(members)]
    return mapping


def flip_distribution(
    noise_type: str, num_classes: int, class_map: Mapping[int, int] | None = None
) -> torch.Tensor:
    """The C x C distribution a *selected* sample's new label is drawn from."""
    check_noise_type(noise_type)
    c = num_classes
    eye = torch.eye(c, dtype=torch.float64)
    if noise_type == "clean":
        return eye
    if noise_type == "symmetric":
        return (1.0 - eye) / (c - 1)
    if noise_type == "uniform":
        return torch.full((c, c), 1.0 / c, dtype=torch.float64)
    if noise_type == "pairflip":
        return eye.roll(1, dims=1)
    if noise_type == "asymmetric":
        if not class_map:
            raise ValueError("asymmetric noise needs a class map; this dataset defines none")
        f = eye.clone()
        for src, dst in class_map.items():
            if not (0 <= src < c and 0 <= dst < c):
                raise ValueError(f"class map entry {src}->{dst} outside 0..{c - 1}")
            f[src] = 0.0
            f[src, dst] = 1.0
        return f
    raise ValueError(f"noise_type {noise_type!r} has no flip distribution (human noise is read from a file)")


def transition_matrix(
    noise_type: str, rate: float, num_classes: int, class_map: Mapping[int, int] | None = None
) -> torch.Tensor:
    """T[i, j] = P(noisy = j | clean = i) = (1 - r) I + r F."""
    rate = check_noise_rate(rate)
    f = flip_distribution(noise_type, num_classes, class_map)
    return (1.0 - rate) * torch.eye(num_classes, dtype=torch.float64) + rate * f


@dataclass(frozen=True)
class NoiseDraw:
    noisy: torch.Tensor  # int64 [N]
    selected: torch.Tensor  # bool [N]: samples whose label was redrawn from F


def apply_noise(
    clean: torch.Tensor,
    noise_type: str,
    rate: float,
    num_classes: int,
    seed: int,
    class_map: Mapping[int, int] | None = None,
) -> NoiseDraw:
    """Draw noisy labels from ``clean`` with a CPU generator seeded by ``seed``.

    The draw depends only on (clean, noise_type, rate, num_classes, seed,
    class_map), so every process of a distributed job computes the same labels.
    """
    rate = check_noise_rate(rate)
    f = flip_distribution(noise_type, num_classes, class_map)
    clean = clean.to(torch.int64).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    selected = torch.rand(len(clean), generator=gen, dtype=torch.float64) < rate
    if noise_type == "clean":
        selected = torch.zeros_like(selected)
    noisy = clean.clone()
    if selected.any():
        draws = torch.multinomial(f[clean[selected]].float(), 1, generator=gen).squeeze(1)
        noisy[selected] = draws
    return NoiseDraw(noisy=noisy, selected=selected)


def empirical_transition_matrix(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row-normalised confusion of (clean, noisy) labels; a row with no samples is the identity."""
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((clean.long(), noisy.long()), torch.ones(len(clean), dtype=torch.float64), accumulate=True)
    rows = counts.sum(1, keepdim=True)
    eye = torch.eye(num_classes, dtype=torch.float64)
    return torch.where(rows > 0, counts / rows.clamp_min(1), eye)


def expected_noise_rate(matrix: torch.Tensor, clean: torch.Tensor) -> float:
    """Share of wrong labels that the transition matrix T implies for these clean labels:
    sum_c p(c) (1 - T[c, c]), p the clean class frequencies. It is the nominal rate r for symmetric and
    pairflip noise, but less for asymmetric noise (only mapped classes flip: r = 0.4 on CIFAR-10 leaves 20%
    wrong) and for uniform noise (a redraw may return the true class: r = 0.5 leaves 45% wrong)."""
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    prior = torch.bincount(clean.long().cpu(), minlength=matrix.shape[0]).double() / len(clean)
    return float((prior * (1.0 - matrix.diagonal())).sum())


def actual_noise_rate(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Fraction of samples whose noisy label differs from the clean one."""
    return float((clean != noisy).double().mean())
