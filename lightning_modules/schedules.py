"""Learning-rate schedules as a multiplier of the base lr, stepped every optimiser step.

Expressed in steps so that warm-up can be a fraction of an epoch and so that
they need no duplicate of ``max_epochs`` in the config: the module asks the
trainer for the number of steps.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

ScheduleName = Literal["constant", "cosine", "multistep"]


def lr_factor(
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    schedule: ScheduleName = "constant",
    warmup_epochs: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step``.

    - linear warm-up from ~0 to 1 over ``warmup_epochs`` (may be fractional);
    - ``cosine``: from 1 to 0 over the remaining steps (SGDR without restarts);
    - ``multistep``: times ``gamma`` at each epoch in ``milestones``;
    - ``constant``: 1.
    """
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return gamma ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown lr schedule {schedule!r}; allowed: constant, cosine, multistep")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    max_epochs: int,
    schedule: ScheduleName = "constant",
    warmup_epochs: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> dict:
    """A LambdaLR stepped every optimiser step, in Lightning's scheduler-config form."""
    steps_per_epoch = max(1, total_steps // max(1, max_epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, steps_per_epoch, schedule, warmup_epochs, milestones, gamma),
    )
    return {"scheduler": sched, "interval": "step", "frequency": 1}


def check_schedule(schedule: str, warmup_epochs: float, milestones: Sequence[int], gamma: float) -> None:
    if schedule not in ("constant", "cosine", "multistep"):
        raise ValueError(f"unknown lr schedule {schedule!r}; allowed: constant, cosine, multistep")
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
