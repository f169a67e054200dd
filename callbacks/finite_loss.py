"""Stop a diverging run before a non-finite loss reaches the weights or a checkpoint.

Checked in ``on_before_backward``, which Lightning calls for every backward of every
method: the closure of automatic optimisation (Classifier, SimCLR) and each
``manual_backward`` (CoTeaching, MetaWeightNet). The step is refused before its
gradients exist, so the weights are those of the last finite step and no checkpoint
is written after it (``PeriodicCheckpoint`` skips its on-exception save for this
error). Lightning's ``EarlyStopping(check_finite=True)`` looks only at a monitored
metric at validation time, when an epoch of NaN steps may already be saved as ``last``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run was stopped before using it."""


class FiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` (epoch, step, loss value, last good checkpoint) on a NaN/inf loss.

    Args:
        enabled: ``false`` lets training continue on a non-finite loss (e.g. to study a divergence).
    """

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not self.enabled:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every process stops at the same step, none waits in a collective
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            value = loss.detach().float().flatten()[0].item() if loss.numel() else math.nan
            raise NonFiniteLossError(non_finite_message(trainer, value))


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint the run's checkpoint callbacks wrote (all before the non-finite step)."""
    paths = [p for cb in trainer.checkpoint_callbacks for p in (cb.last_model_path, cb.best_model_path) if p]
    paths = [p for p in paths if Path(p).is_file()]
    return max(paths, key=lambda p: Path(p).stat().st_mtime) if paths else None


def non_finite_message(trainer: pl.Trainer, value: float) -> str:
    good = last_good_checkpoint(trainer)
    where = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
    return (
        f"training stopped: the training loss is {value} at epoch {trainer.current_epoch}, global step "
        f"{trainer.global_step}; the step was not taken and {where}. Lower the learning rate (or check the "
        "data); FiniteLossGuard(enabled=false) (train.py: --finite_loss.enabled false) turns this check off"
    )
