"""Learning-rate schedules as a multiplier of the base lr, stepped every optimiser step.

Expressed in steps so that warm-up can be a fraction of an epoch and so that
they need no duplicate of ``max_epochs`` in the config: the module asks the
trainer for the number of steps.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

ScheduleName = Literal["constant", "cosine", "multistep", "linear"]
SCHEDULES = ("constant", "cosine", "multistep", "linear")


def lr_factor(
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    schedule: ScheduleName = "constant",
    warmup_epochs: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_start_factor: float = 0.0,
    final_lr_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step``.

    - linear warm-up over ``warmup_epochs`` (may be fractional) from ``warmup_start_factor``
      (0: the first step already gets ``1 / warmup_steps``) to 1;
    - ``cosine``: from 1 to ``final_lr_factor`` over the remaining steps (SGDR without restarts);
    - ``linear``: from 1 to ``final_lr_factor`` in a straight line (airbench: warm-up from 0.2 over
      23% of the steps, then down to 0.07);
    - ``multistep``: times ``gamma`` at each epoch in ``milestones``;
    - ``constant``: 1.
    """
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        if warmup_start_factor > 0:
            return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule in ("cosine", "linear"):
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return final_lr_factor + (1.0 - final_lr_factor) * shape
    if schedule == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return gamma ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    max_epochs: int,
    schedule: ScheduleName = "constant",
    warmup_epochs: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_start_factor: float = 0.0,
    final_lr_factor: float = 0.0,
) -> dict:
    """A LambdaLR stepped every optimiser step, in Lightning's scheduler-config form."""
    steps_per_epoch = max(1, total_steps // max(1, max_epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, steps_per_epoch, schedule, warmup_epochs, milestones, gamma,
                               warmup_start_factor, final_lr_factor),
    )
    return {"scheduler": sched, "interval": "step", "frequency": 1}


def check_schedule(schedule: str, warmup_epochs: float, milestones: Sequence[int], gamma: float,
                   warmup_start_factor: float = 0.0, final_lr_factor: float = 0.0) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if not 0.0 <= warmup_start_factor <= 1.0:
        raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
    if not 0.0 <= final_lr_factor <= 1.0:
        raise ValueError(f"final_lr_factor must be in [0, 1], got {final_lr_factor}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if any(m < 0 for m in milestones):
        raise ValueError(f"milestones must be >= 0 epochs, got {list(milestones)}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")


SchedulerInterval = Literal["step", "epoch"]


def check_scheduler_choice(lr_scheduler, schedule: str, warmup_epochs: float, interval: str) -> None:
    """An injected scheduler replaces the named schedule; both at once would be two schedules."""
    if lr_scheduler is not None and (schedule != "constant" or warmup_epochs):
        raise ValueError(
            f"set either lr_scheduler or lr_schedule/warmup_epochs, not both (got lr_schedule {schedule!r}, "
            f"warmup_epochs {warmup_epochs} and an lr_scheduler)"
        )
    if interval not in ("step", "epoch"):
        raise ValueError(f"lr_scheduler_interval must be 'step' or 'epoch', got {interval!r}")


def injected_scheduler(optimizer: torch.optim.Optimizer, lr_scheduler, interval: str, monitor: str) -> dict:
    """Lightning's scheduler config for a user's ``LRSchedulerCallable`` (OneCycleLR, ReduceLROnPlateau,
    CosineAnnealingWarmRestarts, ...); ``monitor`` is read by ReduceLROnPlateau only."""
    scheduler = lr_scheduler(optimizer)
    config = {"scheduler": scheduler, "interval": interval, "frequency": 1}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = monitor
    return config
