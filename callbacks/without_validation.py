"""Training without a validation set (``val_size: 0``, as CIFAR-N's protocol trains on every image)."""

from __future__ import annotations

import pytorch_lightning as pl

NO_VALIDATION_NOTE = "val_size is 0: no validation set, so no best-by-validation checkpoint; test is the last epoch"


def has_validation_set(dm) -> bool:
    """False for a datamodule whose split left no validation images (``val_size: 0``), after its setup."""
    val_indices = getattr(dm, "val_indices", None)
    return val_indices is None or len(val_indices) > 0


class WithoutValidationSet(pl.Callback):
    """``val_size: 0`` (train on every image, as CIFAR-N's protocol): no validation loop and no
    best-by-validation checkpoint, only ``last.ckpt``; test_results.json says so. Decided in
    ``setup``, after the datamodule's (an image folder may bring a validation split of its own)."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not has_validation_set(trainer.datamodule):
            trainer.limit_val_batches = 0
            if self.checkpoint is not None:
                self.checkpoint.monitor, self.checkpoint.save_top_k = None, 0
