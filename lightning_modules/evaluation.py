"""Validation / test metrics shared by every classifier-like module.

One torchmetrics object per split (lightning-hydra-template style). The test
prefix is an attribute so that train.py can report the last and the
best-by-validation checkpoints under different names (``test/`` and
``test_best/``) in the same run.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .tta import tta_logits


def split_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        }
    )


class EvaluationMixin:
    """Adds ``val/acc``, ``val/f1``, ``{test_prefix}/acc``, ``{test_prefix}/f1`` logging, and the
    validation / test / predict steps of a module whose ``forward`` gives the evaluated logits."""

    test_prefix: str = "test"

    def init_eval_metrics(self: pl.LightningModule, num_classes: int) -> None:
        self.val_metrics = split_metrics(num_classes)
        self.test_metrics = split_metrics(num_classes)

    def log_eval(self: pl.LightningModule, split: str, logits: torch.Tensor, batch: dict) -> None:
        target = batch["target"]
        loss = nn.functional.cross_entropy(logits.float(), target)
        if split == "val":
            self.val_metrics.update(logits, target)
            prefix, metrics = "val", self.val_metrics
        else:
            self.test_metrics.update(logits, target)
            prefix, metrics = self.test_prefix, self.test_metrics
        self.log(f"{prefix}/loss", loss, sync_dist=True, batch_size=len(target))
        self.log_dict({f"{prefix}/{k}": m for k, m in metrics.items()}, prog_bar=(split == "val"))

    def eval_logits(self: pl.LightningModule, split: str, images: torch.Tensor) -> torch.Tensor:
        """``self(images)``, averaged over the test-time augmentation ``hparams.tta`` outside validation."""
        tta = self.hparams.get("tta", "none") if split != "val" else "none"
        return tta_logits(self, images, tta)

    def eval_step(self: pl.LightningModule, split: str, batch: dict) -> dict[str, torch.Tensor]:
        """Log the split's metrics; return the logits for callbacks (confusion matrix, mistakes), which
        then need no second forward pass (``callbacks.plotting.logits_from``)."""
        logits = self.eval_logits(split, batch["image"])
        self.log_eval(split, logits, batch)
        return {"logits": logits}

    def log_two_networks(self: pl.LightningModule, split: str, batch: dict, logits1: torch.Tensor,
                         logits2: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Two-network methods: the evaluated logits' metrics plus each network's accuracy
        (``{prefix}/acc_net1``, ``acc_net2``; the module owns ``val_acc_nets`` / ``test_acc_nets``)."""
        self.log_eval(split, logits, batch)
        metrics = self.val_acc_nets if split == "val" else self.test_acc_nets
        prefix = "val" if split == "val" else self.test_prefix
        for k, (metric, lg) in enumerate(zip(metrics, (logits1, logits2)), start=1):
            metric.update(lg, batch["target"])
            self.log(f"{prefix}/acc_net{k}", metric)
        return {"logits": logits}

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.eval_step("test", batch)

    def predict_step(self: pl.LightningModule, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self.eval_logits("predict", batch["image"]).softmax(1)
        return {"index": batch["index"], "probs": probs, "pred": probs.argmax(1)}
