"""Out-of-sample predicted probabilities of a cross-validation fold (confident learning's input).

With the datamodule's ``num_folds`` / ``fold`` set, the model trains on the other folds; at the end of
``fit`` this callback predicts the held-out fold (evaluated network, eval mode, no augmentation) and
writes ``heldout_probs.npz`` (``index``, ``probs`` [M, C], ``given``) to the run folder.
``scripts/confident_learning.py`` runs one fit per fold and joins the files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from datamodules import contracts
from lightning_modules.sample_scores import score_training_set

HELDOUT_FILE = "heldout_probs.npz"


class HeldOutPredictions(Callback):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if not contracts.offers(dm, "heldout_indices"):
            raise ValueError("HeldOutPredictions needs the datamodule's num_folds >= 2 and a fold to hold out")
        was_training = pl_module.training
        pl_module.eval()
        probs = score_training_set(pl_module, lambda x, y: {"probs": pl_module(x).float().softmax(1).T},
                                   loader="heldout_dataloader")["probs"]  # [C, N], a collective under DDP
        pl_module.train(was_training)
        log_dir = trainer.log_dir  # a collective under DDP
        if not trainer.is_global_zero or log_dir is None:
            return
        index = dm.heldout_indices
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        np.savez(Path(log_dir) / HELDOUT_FILE, index=index.numpy(), probs=probs[:, index].T.cpu().numpy(),
                 given=dm.noisy_targets[index].numpy())
