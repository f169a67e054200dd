"""Lookahead weight averaging with airbench's schedule, for any method.

Every ``every`` optimiser steps the slow weights move towards the trained ones,
``slow = decay * slow + (1 - decay) * fast``, and the trained weights are then
*replaced* by the slow ones (lookahead; Zhang et al. 2019). ``decay`` grows as
``max_decay * (step / total_steps) ** power``: no averaging at the start, strong
averaging near the end. At the last step the network is set to the slow weights,
so the last checkpoint and the test see the averaged network. Floating-point
buffers (batch-norm statistics) are averaged too. This is the recipe of
airbench (Keller Jordan, github.com/KellerJordan/cifar10-airbench,
``legacy/airbench94.py``: every 5 steps, ``0.95**5 * (t/T)**3``).

Lightning's own ``WeightAveraging`` / ``EMAWeightAveraging`` keep an average
*beside* the trained weights and swap it in only for evaluation; lookahead
feeds the average back into training, which is what airbench measures.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from lightning_modules.method_base import find_backbones


class Lookahead(pl.Callback):
    """Args:
    every: optimiser steps between two updates.
    max_decay: decay reached at the last step.
    power: exponent of the decay's growth with training progress.
    modules: attribute names of the networks to average (default: every child ``Backbone``).
    """

    def __init__(self, every: int = 5, max_decay: float = 0.95**5, power: float = 3.0,
                 modules: list[str] | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got {max_decay}")
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        self.every, self.max_decay, self.power, self.modules = every, max_decay, power, modules
        self.slow: dict[str, torch.Tensor] | None = None
        self._pending: dict[str, torch.Tensor] | None = None
        self.batches = 0  # training batches done (two-optimiser methods step twice per batch)

    def decay(self, step: int, total_steps: int) -> float:
        return self.max_decay * (min(step, total_steps) / max(1, total_steps)) ** self.power

    def _tensors(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in find_backbones(pl_module, self.modules).items():
            for key, value in module.state_dict(keep_vars=True).items():
                if value.is_floating_point():
                    out[f"{name}.{key}"] = value
        return out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        live = self._tensors(pl_module)
        if self._pending is not None:  # resumed: the slow weights come from the checkpoint
            self.slow = {k: self._pending[k].to(v.device, v.dtype) for k, v in live.items()}
            self._pending = None
        else:
            self.slow = {k: v.detach().clone() for k, v in live.items()}
            self.batches = 0

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches += 1
        step = self.batches
        total = int(trainer.estimated_stepping_batches) * trainer.accumulate_grad_batches
        last = step >= total
        if step % self.every and not last:
            return
        decay = 1.0 if last else self.decay(step, total)
        for key, value in self._tensors(pl_module).items():
            slow = self.slow[key]
            slow.lerp_(value.detach(), 1.0 - decay)
            value.data.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"slow": {k: v.detach().cpu().clone() for k, v in (self.slow or {}).items()}, "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("slow") or None
        self.batches = int(state_dict.get("batches", 0))
