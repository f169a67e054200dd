"""ModelCheckpoint that keeps the best checkpoint *and* a truly last one.

Lightning 2.6 rewrites ``last.ckpt`` only in epochs that also save a top-k
checkpoint (``ModelCheckpoint.on_validation_end``), so with ``monitor`` set and
``save_top_k=1`` the "last" checkpoint is really the best one whenever the last
epoch was not the best. Reporting test accuracy "for the last checkpoint" and
resuming with ``--ckpt_path last`` both need the latest weights.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """Saves ``last.ckpt`` wherever Lightning would have saved a checkpoint, top-k or not."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def _save_last_if_missing(self, trainer: pl.Trainer) -> None:
        # _should_skip_saving_checkpoint is also true when this step was already saved (with last.ckpt)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
