"""Test accuracy after every training epoch and its best epoch: the CIFAR-N leaderboard's protocol.

The published CIFAR-N figures train on all 50,000 images (``val_size: 0``) and report the best
*test* epoch. That number selects the model on the test set, so it is **not** a valid
model-selection result; it exists only to compare with such tables. train.py reports it as
``test_oracle_best`` (with that warning) only when asked (``--test_oracle.enabled true``).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import move_data_to_device
from pytorch_lightning.utilities.model_helpers import is_overridden
from torchmetrics.classification import MulticlassAccuracy

from datamodules import contracts as c

ORACLE_NOTE = (
    "best test accuracy over epochs (the CIFAR-N leaderboard protocol): the epoch is chosen on the test set, "
    "so this is NOT a valid model-selection number; use test/acc (last) or test_best/acc (best noisy validation)"
)


class TestOracle(Callback):
    """Evaluates the test set after every training epoch (off by default).

    Args:
        enabled: evaluate and keep ``history`` (one test accuracy per epoch).
    """

    def __init__(self, enabled: bool = False):
        super().__init__()
        self.enabled = enabled
        self.history: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or not is_overridden("test_step", pl_module):
            return
        dm = trainer.datamodule
        for name in ("test_dataloader", "eval_batch"):
            c.require(dm, name, "TestOracle")
        metric = MulticlassAccuracy(num_classes=dm.num_classes, average="micro").to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for batch in dm.test_dataloader():
                batch = dm.eval_batch(move_data_to_device(batch, pl_module.device))
                metric.update(pl_module(batch["image"]), batch["target"])
        pl_module.train(was_training)
        acc = float(metric.compute())  # synchronised over processes under DDP
        self.history.append(acc)
        pl_module.log("test_oracle/acc", acc, on_step=False, on_epoch=True)

    def report(self) -> dict | None:
        if not self.history:
            return None
        best = max(range(len(self.history)), key=self.history.__getitem__)
        return {"acc": self.history[best], "epoch": best, "per_epoch": list(self.history), "note": ORACLE_NOTE}

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
