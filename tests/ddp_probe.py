"""What the multi-process tests inject into ``train.py`` runs to see inside each process."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_modules import coteaching_selection as sel
from lightning_modules.coteaching import CoTeaching


class DumpState(pl.Callback):
    """At the end of fit each process saves ``folder/rank{R}.pt``: its parameters, its optimiser states,
    the sample indices it trained on (one list per epoch), and the module's ``forget_rate`` if any."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.epochs: list[list[int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append([])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch = batch["train"] if "train" in batch else batch  # MetaWeightNet: {"train": ..., "meta": ...}
        self.epochs[-1] += batch["index"].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({
            "world_size": trainer.world_size,
            # parameters, not buffers: DDP broadcasts rank 0's buffers (BatchNorm statistics) at every
            # forward, so another process's buffers after its last forward are never used
            "parameters": {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()},
            "optimizers": [opt.state_dict() for opt in trainer.optimizers],
            "seen_per_epoch": self.epochs,
            "seen_indices": [i for epoch in self.epochs for i in epoch],
            "forget_rate": getattr(pl_module, "forget_rate", None),
        }, self.folder / f"rank{trainer.global_rank}.pt")


class CoTeachingPlusAgreeingOnRank1(CoTeaching):
    """Co-teaching+ in which, on the first batch, rank 1's two networks agree on its whole batch.

    Rank 1's disagreement set (hence both its selections) is empty while rank 0's is not: the
    situation where a process deciding alone whether to step would skip a step the other takes.
    """

    forced = False

    def compute_updates(self, batch: dict, forget_rate: float) -> dict:
        if self.global_rank != 1 or self.forced:
            return super().compute_updates(batch, forget_rate)
        self.forced = True
        disagreement = sel.disagreement
        sel.disagreement = lambda logits1, logits2: disagreement(logits1, logits2)[:0]
        try:
            out = super().compute_updates(batch, forget_rate)
        finally:
            sel.disagreement = disagreement
        assert out["pick1"].numel() == out["pick2"].numel() == 0
        return out
