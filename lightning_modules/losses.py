"""Losses as small pure functions of (logits, targets)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generalized_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7, reduction: str = "mean"
) -> torch.Tensor:
    """GCE (Zhang & Sabuncu, NeurIPS 2018), non-truncated: (1 - p_y^q) / q.

    q -> 0 recovers cross-entropy, q = 1 is MAE (up to a factor 2).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"GCE q must be in (0, 1], got {q}")
    # log-space for stability: p_y^q = exp(q * log p_y)
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)  # [B]
    loss = -torch.expm1(q * log_p) / q
    return _reduce(loss, reduction)


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing, reduction=reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


def check_loss(loss: str, q: float) -> None:
    """Raise early for an unknown loss name or a GCE q outside (0, 1]."""
    if loss not in ("ce", "gce"):
        raise ValueError(f"unknown loss {loss!r}; allowed: ce, gce")
    if loss == "gce" and not 0.0 < q <= 1.0:
        raise ValueError(f"gce_q must be in (0, 1], got {q}")


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss: str = "ce",
    q: float = 0.7,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Dispatch by name: ``ce`` or ``gce``."""
    if loss == "ce":
        return cross_entropy(logits, targets, label_smoothing, reduction)
    if loss == "gce":
        if label_smoothing:
            raise ValueError("label_smoothing is only defined for the ce loss")
        return generalized_cross_entropy(logits, targets, q, reduction)
    raise ValueError(f"unknown loss {loss!r}; allowed: ce, gce")
