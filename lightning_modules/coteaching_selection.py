"""Co-teaching's pure pieces: small-loss selection, the forget-rate and optimiser schedules,
co-teaching+ disagreement, and a forget-rate estimate from per-sample losses.

References:
- Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy
  Labels", NeurIPS 2018; official code https://github.com/bhanML/Co-teaching (``main.py``,
  ``loss.py``).
- Yu et al., "How does Disagreement Help Generalization against Label Corruption?"
  (co-teaching+), ICML 2019; official code https://github.com/xingruiyu/coteaching_plus.

Where this module departs from the reference code it says so in the docstring.
"""

from __future__ import annotations

import numpy as np
import torch


def check_forget_rate(forget_rate: float) -> None:
    if not 0.0 <= float(forget_rate) < 1.0:
        raise ValueError(f"forget_rate must be in [0, 1), got {forget_rate}")


def num_remember(batch_size: int, forget_rate: float) -> int:
    """How many samples a network keeps: ``round((1 - R) * B)``.

    The reference code uses ``int()`` (floor); rounding is this project's definition and
    differs from it by at most one sample.
    """
    return int(round((1.0 - forget_rate) * batch_size))


def select_small_loss(losses: torch.Tensor, forget_rate: float, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``round((1 - forget_rate) * B)`` smallest entries of ``losses`` [B].

    With ``labels`` [B] (the given labels), the selection is made within each label instead:
    ``round((1 - forget_rate) * B_c)`` of the ``B_c`` samples labelled c, so that no class can
    drop out of training. The paper's selection is batch-wide (``labels=None``); under
    class-dependent noise it can lock a whole class out: once a class is mostly discarded its
    losses only grow (docs/results.md, CIFAR-10N ``worst``).
    Ties are broken by position (stable sort), so the result is deterministic.
    """
    check_forget_rate(forget_rate)
    order = torch.argsort(losses.detach(), stable=True)
    if labels is None:
        return order[: num_remember(losses.numel(), forget_rate)]
    ranked = labels[order]
    picks = [order[ranked == c][: num_remember(int((ranked == c).sum()), forget_rate)] for c in ranked.unique()]
    return torch.cat(picks) if picks else order


def forget_rate_at(epoch: int, forget_rate: float, num_gradual: int = 10, exponent: float = 1.0) -> float:
    """R(t) = forget_rate * min((t / num_gradual) ** exponent, 1) at (0-based) epoch t.

    This is the paper's schedule (eq. for R(T) with T_k = num_gradual, c = exponent). The
    official code instead uses ``np.linspace(0, forget_rate ** exponent, num_gradual)`` for the
    first ``num_gradual`` epochs, i.e. it reaches the full rate one epoch earlier and applies
    the exponent to the rate rather than to time.
    """
    check_forget_rate(forget_rate)
    if num_gradual < 1:
        raise ValueError(f"num_gradual must be >= 1, got {num_gradual}")
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    return float(forget_rate) * min((max(epoch, 0) / num_gradual) ** exponent, 1.0)


def adam_plan(
    epoch: int, max_epochs: int, epoch_decay_start: int, lr: float = 1e-3, beta1: float = 0.9,
    beta1_decayed: float | None = 0.1,
) -> tuple[float, float]:
    """(lr, beta1) for Adam at (0-based) ``epoch``, as in the official co-teaching ``main.py``::

        for i in range(args.epoch_decay_start, args.n_epoch):
            alpha_plan[i] = float(args.n_epoch - i) / (args.n_epoch - args.epoch_decay_start) * learning_rate
            beta1_plan[i] = mom2      # mom1 = 0.9, mom2 = 0.1

    so from ``epoch_decay_start`` on, the lr falls linearly (it would reach 0 at epoch
    ``max_epochs``, one past the last one; the last epoch runs at ``lr / (max_epochs -
    epoch_decay_start)``) and beta1 switches from 0.9 to 0.1 in one step.
    ``beta1_decayed=None`` keeps beta1 unchanged (cleanlab's variant).
    """
    if epoch < epoch_decay_start:
        return lr, beta1
    factor = (max_epochs - epoch) / max(1, max_epochs - epoch_decay_start)
    return lr * max(factor, 0.0), (beta1 if beta1_decayed is None else beta1_decayed)


def disagreement(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """Positions where the two networks' argmax predictions differ (co-teaching+)."""
    return torch.nonzero(logits1.argmax(1) != logits2.argmax(1), as_tuple=False).flatten()


def cross_selection(
    loss1: torch.Tensor, loss2: torch.Tensor, forget_rate: float, candidates: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The small-loss picks of network 1 and of network 2 (positions in the batch).

    Network 1's picks train network 2 and vice versa. ``candidates`` restricts the choice to
    those positions (co-teaching+: the disagreement set); empty candidates give empty picks.
    ``labels``: select within each given label (``select_small_loss``).
    """
    if candidates is None:
        return select_small_loss(loss1, forget_rate, labels), select_small_loss(loss2, forget_rate, labels)
    sub = None if labels is None else labels[candidates]
    return (
        candidates[select_small_loss(loss1[candidates], forget_rate, sub)],
        candidates[select_small_loss(loss2[candidates], forget_rate, sub)],
    )


def cross_update_losses(
    loss1: torch.Tensor, loss2: torch.Tensor, pick1: torch.Tensor, pick2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The losses each network minimises: network 1 on network 2's picks and vice versa.

    Means over the picks. The reference ``loss.py`` divides that mean once more by
    ``num_remember``; with Adam a constant loss scale barely matters, so it is left out.
    An empty pick gives a zero loss that still depends on the inputs (no update).
    """
    update1 = loss1[pick2].mean() if pick2.numel() else loss1.sum() * 0.0
    update2 = loss2[pick1].mean() if pick1.numel() else loss2.sum() * 0.0
    return update1, update2


def estimate_forget_rate(losses: torch.Tensor | np.ndarray, seed: int = 0, max_rate: float = 0.95) -> float:
    """Estimate the fraction of noisy labels from per-sample training losses.

    Fits a two-component Gaussian mixture to the losses (min-max normalised, as DivideMix
    does) and returns the weight of the component with the larger mean: after a short
    warm-up, networks fit clean labels first, so noisy labels sit in the high-loss mode.
    Clipped to ``[0, max_rate]`` so the result is a valid ``forget_rate``.
    """
    from sklearn.mixture import GaussianMixture  # heavy import, only needed here

    x = np.asarray(torch.as_tensor(losses).detach().cpu().double().numpy(), dtype=np.float64).reshape(-1, 1)
    if len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"need at least 2 finite losses to estimate a forget rate, got {len(x)}")
    span = x.max() - x.min()
    if span <= 0:
        return 0.0
    x = (x - x.min()) / span
    gmm = GaussianMixture(n_components=2, max_iter=100, tol=1e-3, reg_covar=5e-4, random_state=seed).fit(x)
    high = int(np.argmax(gmm.means_.ravel()))
    return float(min(max(gmm.weights_[high], 0.0), max_rate))
