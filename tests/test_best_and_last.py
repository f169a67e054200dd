"""last.ckpt must hold the latest weights even when the last epoch is not the best."""

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel

from callbacks.best_and_last import BestAndLastCheckpoint


class WorseEveryEpoch(BoringModel):
    def on_validation_epoch_end(self) -> None:
        self.log("val/acc", 1.0 / (self.current_epoch + 1))  # best at epoch 0


def _fit(tmp_path, callback_cls) -> tuple[int, int]:
    ckpt = callback_cls(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True)
    trainer = pl.Trainer(
        max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[ckpt], logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(WorseEveryEpoch())
    last = torch.load(ckpt.last_model_path, weights_only=False)["epoch"]
    best = torch.load(ckpt.best_model_path, weights_only=False)["epoch"]
    return last, best


def test_last_checkpoint_is_the_final_epoch(tmp_path):
    last, best = _fit(tmp_path, BestAndLastCheckpoint)
    assert (last, best) == (2, 0)


def test_plain_model_checkpoint_shows_the_problem(tmp_path):
    """Documents why the subclass exists: Lightning's own class leaves last.ckpt at the best epoch."""
    last, best = _fit(tmp_path, ModelCheckpoint)
    assert best == 0 and last == 0
