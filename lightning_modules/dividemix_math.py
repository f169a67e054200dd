"""DivideMix's pure pieces: the loss-GMM split, sharpening, label co-refinement and co-guessing,
MixUp, the semi-supervised loss with its ramp, and the two regularisers.

Li, Socher, Hoi, "DivideMix: Learning with Noisy Labels as Semi-supervised Learning", ICLR 2020;
official code https://github.com/LiJunnan1992/DivideMix (``Train_cifar.py``: ``eval_train``,
``train``, ``linear_rampup``, ``SemiLoss``, ``NegEntropy``). Each function names the lines it
follows; where it departs from them it says so.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# sklearn.mixture.GaussianMixture settings of the reference ``eval_train``
GMM_MAX_ITER = 10
GMM_TOL = 1e-2
GMM_REG_COVAR = 5e-4


def normalise_losses(losses: torch.Tensor) -> torch.Tensor:
    """Min-max scale per-sample losses to [0, 1] (``(l - min) / (max - min)``); all equal -> zeros."""
    losses = torch.as_tensor(losses).detach().double()
    if losses.ndim != 1 or losses.numel() < 2 or not torch.isfinite(losses).all():
        raise ValueError(f"need a 1-D tensor of at least 2 finite losses, got shape {tuple(losses.shape)} "
                         f"with {int((~torch.isfinite(losses)).sum())} non-finite values")
    span = losses.max() - losses.min()
    if span <= 0:
        return torch.zeros_like(losses)
    return (losses - losses.min()) / span


def gmm_clean_probability(normalised_losses: torch.Tensor | np.ndarray, seed: int = 0) -> torch.Tensor:
    """Posterior of the low-mean component of a 2-component Gaussian mixture fitted to the losses.

    The reference fits ``GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)``
    to the normalised losses and keeps ``predict_proba[:, means_.argmin()]``: the probability
    that a sample's label is clean. ``seed`` fixes the k-means initialisation (the reference
    leaves it random) so that every process and a resumed run get the same split.
    Input of identical losses (nothing to separate) gives probability 1 everywhere.
    """
    from sklearn.mixture import GaussianMixture  # heavy import, only needed here

    x = torch.as_tensor(normalised_losses).detach().double().cpu().numpy().reshape(-1, 1)
    if len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"need at least 2 finite losses for the mixture, got {len(x)}")
    if float(x.max() - x.min()) <= 0:
        return torch.ones(len(x), dtype=torch.float64)
    gmm = GaussianMixture(n_components=2, max_iter=GMM_MAX_ITER, tol=GMM_TOL, reg_covar=GMM_REG_COVAR,
                          random_state=seed)
    gmm.fit(x)
    prob = gmm.predict_proba(x)[:, int(np.argmin(gmm.means_.ravel()))]
    return torch.from_numpy(prob)


def split_clean(prob: torch.Tensor, p_threshold: float) -> torch.Tensor:
    """The labelled set: samples whose clean probability exceeds ``p_threshold`` (strictly, as ``prob > tau``)."""
    check_probability("p_threshold", p_threshold)
    return prob > p_threshold


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p ** (1 / T)`` renormalised over the classes (last dimension)."""
    if not temperature > 0:
        raise ValueError(f"sharpening temperature T must be > 0, got {temperature}")
    p = probs.pow(1.0 / temperature)
    return p / p.sum(dim=-1, keepdim=True)


def co_refine(view_probs: list[torch.Tensor], given: torch.Tensor, clean_prob: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """Refined targets of labelled samples: ``sharpen(w * onehot(y) + (1 - w) * mean_views(p), T)``.

    ``view_probs``: the trained network's softmax on each augmented view [B, C]; ``given``: the
    noisy labels [B]; ``clean_prob``: w, the *other* network's clean probability [B].
    """
    p = torch.stack(view_probs).mean(0)
    onehot = F.one_hot(given, p.shape[-1]).to(p.dtype)
    w = clean_prob.to(p.dtype).view(-1, 1)
    return sharpen(w * onehot + (1 - w) * p, temperature)


def co_guess(view_probs: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Guessed targets of unlabelled samples: the mean of both networks' softmaxes over both views, sharpened."""
    return sharpen(torch.stack(view_probs).mean(0), temperature)


def mixup_lambda(alpha: float, generator: torch.Generator | None = None) -> float:
    """``l ~ Beta(alpha, alpha)``, returned as ``max(l, 1 - l)`` so that the mix stays closer to its first input.

    Drawn with torch (the reference uses ``np.random.beta``) from ``generator`` or the global torch
    generator, whose state the exact-resume callback checkpoints.
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    # Beta(a, a) = G1 / (G1 + G2) with G1, G2 ~ Gamma(a, 1)
    g = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64), generator=generator)
    lam = float(g[0] / (g[0] + g[1]))
    return max(lam, 1.0 - lam)


def mixup(inputs: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam * a + (1 - lam) * a[perm]`` for the inputs and for the (soft) targets alike."""
    return lam * inputs + (1 - lam) * inputs[perm], lam * targets + (1 - lam) * targets[perm]


def linear_rampup(current_epoch: float, warmup_epochs: float, lambda_u: float, rampup_length: float = 16.0) -> float:
    """Weight of the unlabelled loss: ``lambda_u * clip((epoch - warm_up) / rampup_length, 0, 1)``.

    ``current_epoch`` is fractional (``epoch + batch_idx / batches_per_epoch``, as in the reference).
    """
    if rampup_length <= 0:
        raise ValueError(f"rampup_length must be > 0 (epochs), got {rampup_length}")
    return float(lambda_u) * float(np.clip((current_epoch - warmup_epochs) / rampup_length, 0.0, 1.0))


def semi_losses(logits_x: torch.Tensor, targets_x: torch.Tensor, logits_u: torch.Tensor, targets_u: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Lx, Lu): soft-target cross-entropy on the mixed labelled part and the mean squared error
    between softmax and target on the mixed unlabelled part (mean over samples *and* classes, as
    ``torch.mean((probs_u - targets_u) ** 2)`` in the reference). An empty part gives 0 (with a graph)."""
    if len(logits_x):
        lx = -(F.log_softmax(logits_x.float(), dim=1) * targets_x).sum(1).mean()
    else:
        lx = logits_x.float().sum() * 0.0
    if len(logits_u):
        lu = (logits_u.float().softmax(1) - targets_u).pow(2).mean()
    else:
        lu = logits_u.float().sum() * 0.0
    return lx, lu


def uniform_prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """``sum_c pi_c * log(pi_c / mean_batch(p_c))`` with a uniform prior pi: KL(prior || mean prediction),
    which keeps the network from putting every sample into one class."""
    mean_pred = logits.float().softmax(1).mean(0)
    prior = torch.full_like(mean_pred, 1.0 / mean_pred.numel())
    return (prior * torch.log(prior / mean_pred)).sum()


def confidence_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Negative entropy ``mean_batch(sum_c p_c log p_c)``: added to the warm-up loss under asymmetric
    noise it penalises confident predictions (``NegEntropy`` in the reference)."""
    logp = F.log_softmax(logits.float(), dim=1)
    return (logp.exp() * logp).sum(1).mean()


def check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not math.isnan(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
