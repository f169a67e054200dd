"""What the multi-process tests inject into ``train.py`` runs to see inside each process."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class DumpState(pl.Callback):
    """At the end of fit each process saves ``folder/rank{R}.pt``: its weights, its optimiser states,
    the sample indices it trained on, and the module's ``forget_rate`` when it has one."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.indices: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch = batch["train"] if "train" in batch else batch  # MetaWeightNet: {"train": ..., "meta": ...}
        self.indices += batch["index"].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({
            "world_size": trainer.world_size,
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "optimizers": [opt.state_dict() for opt in trainer.optimizers],
            "seen_indices": self.indices,
            "forget_rate": getattr(pl_module, "forget_rate", None),
        }, self.folder / f"rank{trainer.global_rank}.pt")
