"""Every method learns the labels it is given, and clean labels reach only its logging.

For a noisy-label framework the one leak that must never go unnoticed is a method
that trains on ``clean_target`` (the ground truth, present in every batch for
diagnostics) instead of ``target``. Two checks per method, on four separable 2-D
blobs:

* ``test_method_learns_the_given_labels``: the given labels are a fixed
  derangement of the truth (``PERMUTATION``); the trained model must predict the
  permuted labels on fresh points. Training on the truth gives ~0 accuracy there.
* ``test_clean_labels_reach_only_logging``: replacing every ``clean_target`` by
  random labels leaves the weights after a few steps bit-identical, while
  changing a few *given* labels does not (so the comparison can fail).

A new method is one more entry in ``METHODS``: a name and a function that builds
the module for ``NUM_CLASSES`` classes on ``BlobData``'s 2-D inputs (a meta set,
``noise_rate`` and ``noisy_targets`` are available from the datamodule).
"""

from __future__ import annotations

from typing import Callable

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from lightning_modules import Classifier, CoTeaching, MetaWeightNet
from lightning_modules.backbones import MLP

NUM_CLASSES = 4
PERMUTATION = torch.tensor([1, 2, 3, 0])  # given label of true class c; no class keeps its label
CENTRES = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [-3.0, -3.0], [3.0, -3.0]])
EPOCHS = 6


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of four well-separated Gaussian blobs and their true class."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.arange(n) % NUM_CLASSES
    return CENTRES[truth] + 0.7 * torch.randn(n, 2, generator=g), truth


class LabelledPoints(Dataset):
    """Batches in the project's format: ``image``, ``target`` (given), ``clean_target``, ``index``."""

    def __init__(self, x: torch.Tensor, target: torch.Tensor, clean_target: torch.Tensor):
        self.x, self.target, self.clean_target = x, target, clean_target

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return {"image": self.x[idx], "target": self.target[idx], "clean_target": self.clean_target[idx],
                "index": idx}


class BlobData(pl.LightningDataModule):
    """Training points with given labels ``PERMUTATION[truth]``; a meta set labelled the same way."""

    image_shape = (2, 1, 1)
    num_classes = NUM_CLASSES

    def __init__(self, given: torch.Tensor | None = None, clean: torch.Tensor | None = None, meta_size: int = 0):
        super().__init__()
        self.save_hyperparameters({"noise_rate": 0.0, "meta_size": meta_size})
        self.x, truth = blobs(400, seed=0)
        self.noisy_targets = PERMUTATION[truth] if given is None else given
        self.clean_targets = truth if clean is None else clean
        self.meta_x, meta_truth = blobs(4 * meta_size, seed=1)
        self.meta_given, self.meta_truth = PERMUTATION[meta_truth], meta_truth

    def _loader(self, ds: Dataset, seed: int, batch_size: int = 50) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=lambda b: b, generator=g)

    def train_dataloader(self):
        train = self._loader(LabelledPoints(self.x, self.noisy_targets, self.clean_targets), seed=0)
        if not self.hparams.meta_size:
            return train
        meta = self._loader(LabelledPoints(self.meta_x, self.meta_given, self.meta_truth), seed=1, batch_size=20)
        return CombinedLoader({"train": train, "meta": meta}, mode="max_size_cycle")


def mlp() -> MLP:
    return MLP(input_channel=2, n_outputs=NUM_CLASSES, image_size=1, hidden=(16,))


# name -> (module factory, meta images per class the method needs)
METHODS: dict[str, tuple[Callable[[], pl.LightningModule], int]] = {
    "ce": (lambda: Classifier(mlp(), num_classes=NUM_CLASSES, optimizer=lambda p: torch.optim.Adam(p, lr=0.03)), 0),
    "gce": (lambda: Classifier(mlp(), num_classes=NUM_CLASSES, loss="gce",
                               optimizer=lambda p: torch.optim.Adam(p, lr=0.03)), 0),
    "coteaching": (lambda: CoTeaching(mlp(), num_classes=NUM_CLASSES, forget_rate=0.2, num_gradual=2, lr=0.03,
                                      epoch_decay_start=2), 0),
    "meta_weight_net": (lambda: MetaWeightNet(mlp(), num_classes=NUM_CLASSES, hidden=8,
                                              optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)), 10),
}


def fit(name: str, dm_kwargs: dict | None = None, max_epochs: int = EPOCHS) -> pl.LightningModule:
    make, meta_size = METHODS[name]
    pl.seed_everything(0, verbose=False)
    model = make()
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1,
                         deterministic=True, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=BlobData(meta_size=meta_size, **(dm_kwargs or {})))
    return model


@pytest.mark.parametrize("name", list(METHODS))
def test_method_learns_the_given_labels(name):
    model = fit(name).eval()
    x, truth = blobs(200, seed=7)  # fresh points
    with torch.no_grad():
        pred = model(x).argmax(1)
    given_acc = (pred == PERMUTATION[truth]).float().mean().item()
    assert given_acc > 0.95, f"{name}: accuracy on the given (permuted) labels {given_acc:.3f}"
    assert (pred == truth).float().mean().item() < 0.05  # the truth was never taught


def _weights(model: pl.LightningModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(METHODS))
def test_clean_labels_reach_only_logging(name):
    epochs = 2  # 16 steps; in the second, co-teaching discards samples (R(1) > 0)
    _, truth = blobs(400, seed=0)
    given = PERMUTATION[truth]
    scrambled = torch.randint(0, NUM_CLASSES, truth.shape, generator=torch.Generator().manual_seed(3))
    assert (scrambled != truth).float().mean() > 0.5
    reference = _weights(fit(name, {"given": given, "clean": truth}, max_epochs=epochs))
    other_clean = _weights(fit(name, {"given": given, "clean": scrambled}, max_epochs=epochs))
    assert reference.keys() == other_clean.keys()
    for k in reference:
        assert torch.equal(reference[k], other_clean[k]), f"{name}: {k} depends on clean_target"
    # the comparison can fail: other *given* labels (a tenth of them) change the weights
    changed = given.clone()
    changed[::10] = (changed[::10] + 1) % NUM_CLASSES
    other_given = _weights(fit(name, {"given": changed, "clean": truth}, max_epochs=epochs))
    assert any(not torch.equal(reference[k], other_given[k]) for k in reference if reference[k].is_floating_point())
