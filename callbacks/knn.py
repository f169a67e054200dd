"""Online kNN monitor of an encoder's features (the SSL benchmark protocol of lightly and solo-learn).

Every ``every_n_epochs`` epochs (and, with ``at_start``, once before training)
the encoder embeds the training set (the bank, un-augmented) and the test set;
each test image is classified by a weighted vote of its ``k`` = 200 most
cosine-similar bank images, weight exp(similarity / ``temperature``) with
temperature 0.1 (Wu et al. 2018, the MoCo CIFAR demo; ``lightly.utils.benchmarking.knn_predict``).
Logs ``knn/acc`` (top-1 on the clean test set).

Which labels the bank carries (``bank_labels``):
- ``target`` (default): the labels the datamodule trains on. With
  ``noise_type: clean`` (the SimCLR pretraining configs) these are the true
  labels and the number is directly comparable with lightly's benchmark
  (0.848 after 200 epochs of ResNet-18 SimCLR). With label noise the bank is
  noisy, and the number measures a kNN classifier trained on noisy labels.
- ``clean_target``: the true training labels even on noisy data, to monitor
  representation quality. Logging only: nothing is trained on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules import contracts as c


def knn_predict(
    features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
    k: int = 200, temperature: float = 0.1,
) -> torch.Tensor:
    """Class scores [B, C] of a similarity-weighted kNN vote.

    ``features`` [B, D] and ``bank`` [N, D] must be L2-normalised (dot product = cosine
    similarity). Each of the ``min(k, N)`` nearest bank rows votes for its label with
    weight exp(sim / temperature).
    """
    if features.ndim != 2 or bank.ndim != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(f"features [B, D] and bank [N, D] must agree in D, got {tuple(features.shape)} and "
                         f"{tuple(bank.shape)}")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must have shape ({bank.shape[0]},), got {tuple(bank_labels.shape)}")
    sim = features @ bank.T  # [B, N]
    sim_k, idx = sim.topk(min(k, bank.shape[0]), dim=1)  # [B, K]
    weights = (sim_k / temperature).exp()
    votes = F.one_hot(bank_labels[idx], num_classes).to(weights.dtype)  # [B, K, C]
    return (votes * weights.unsqueeze(-1)).sum(1)


@torch.no_grad()
def embed(encoder: torch.nn.Module, loader: DataLoader, transform, device: torch.device, label_key: str):
    """L2-normalised encoder features and labels of every batch of ``loader``."""
    feats, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        x = transform(batch["image"])
        feats.append(F.normalize(encoder(x).flatten(1).float(), dim=1))
        labels.append(batch[label_key])
    return torch.cat(feats), torch.cat(labels)


def encoder_of(module: pl.LightningModule) -> torch.nn.Module:
    """The encoder whose features are monitored: ``backbone.features`` (SimCLR, Classifier)."""
    backbone = getattr(module, "backbone", None)
    if backbone is None or not hasattr(backbone, "features"):
        raise AttributeError(
            f"KNNMonitor needs a module with `backbone.features` (SimCLR, Classifier); {type(module).__name__} has none"
        )
    return backbone.features


class KNNMonitor(pl.Callback):
    """Logs ``knn/acc`` of the encoder's features (bank: training set; queries: test set).

    Args:
        every_n_epochs: run after every N-th training epoch (and after the last one).
        k: neighbours (200 in lightly's / solo-learn's benchmarks).
        temperature: vote weight exp(sim / temperature) (0.1).
        bank_labels: ``target`` (labels trained on; noisy on noisy data) or ``clean_target``;
            see the module docstring.
        at_start: also measure the randomly initialised encoder before the first epoch.
        batch_size: embedding batch size (default: twice the datamodule's).
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        k: int = 200,
        temperature: float = 0.1,
        bank_labels: Literal["target", "clean_target"] = "target",
        at_start: bool = False,
        batch_size: int | None = None,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if bank_labels not in ("target", "clean_target"):
            raise ValueError(f"bank_labels must be 'target' or 'clean_target', got {bank_labels!r}")
        self.every_n_epochs, self.k, self.temperature = every_n_epochs, k, temperature
        self.bank_labels, self.at_start, self.batch_size = bank_labels, at_start, batch_size
        self.history: list[dict] = []

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start:
            self._run(trainer, pl_module, epoch=-1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or last:
            self._run(trainer, pl_module, epoch)

    # ------------------------------------------------------------------ work
    def _loader(self, loader: DataLoader) -> DataLoader:
        """The same data in order, every sample kept (the training loader shuffles and drops the last batch)."""
        return DataLoader(
            loader.dataset, batch_size=self.batch_size or 2 * (loader.batch_size or 128), shuffle=False,
            collate_fn=loader.collate_fn, num_workers=0,
        )

    def accuracy(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """kNN top-1 accuracy of the current encoder (every process computes the same value)."""
        dm = trainer.datamodule
        for name in ("train_dataloader", "eval_transform"):
            c.require(dm, name, "KNNMonitor")
        encoder = encoder_of(pl_module)
        was_training = pl_module.training
        pl_module.eval()
        try:
            bank, bank_y = embed(encoder, self._loader(dm.train_dataloader()), dm.eval_transform,
                                 pl_module.device, self.bank_labels)
            test, test_y = embed(encoder, self._loader(dm.test_dataloader()), dm.eval_transform,
                                 pl_module.device, "target")
            correct = 0
            for start in range(0, len(test), 1024):  # chunks bound the [B, N] similarity matrix
                scores = knn_predict(test[start:start + 1024], bank, bank_y, dm.num_classes, self.k, self.temperature)
                correct += int((scores.argmax(1) == test_y[start:start + 1024]).sum())
        finally:
            pl_module.train(was_training)
        return correct / len(test)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        acc = self.accuracy(trainer, pl_module)
        pl_module.log("knn/acc", acc, on_step=False, on_epoch=True, rank_zero_only=True)
        self.history.append({"epoch": epoch + 1, "step": trainer.global_step, "knn_acc": acc})
        rank_zero_info(f"knn/acc after epoch {epoch + 1}: {acc:.4f}")
        log_dir = trainer.log_dir  # a collective under DDP (broadcast): every rank must ask
        if trainer.is_global_zero and log_dir:
            out = Path(log_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "knn.json").write_text(json.dumps(self.history, indent=2))
