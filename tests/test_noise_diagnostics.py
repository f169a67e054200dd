"""LabelNoiseDiagnostics against values written down by hand.

A stub method returns, for each sample, a per-sample loss and logits that are
fixed functions of the sample's index (tables below), from a shuffled loader
whose batches mix the indices. The expected slots, AUROC, memorisation and CSV
rows are therefore known before the run and never read from the callback's own
buffers.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from callbacks import LabelNoiseDiagnostics

N_ALL = 12  # size of the full training set; only TRAIN is trained on (the rest: e.g. validation)
TRAIN = [0, 2, 3, 5, 6, 8, 9, 11]
# per index in TRAIN: loss, predicted class, given label, clean label
LOSS = {0: 0.1, 2: 0.9, 3: 0.2, 5: 0.7, 6: 0.3, 8: 0.3, 9: 0.8, 11: 0.05}
PRED = {0: 0, 2: 1, 3: 2, 5: 2, 6: 1, 8: 2, 9: 1, 11: 2}
GIVEN = {0: 0, 2: 1, 3: 2, 5: 1, 6: 1, 8: 2, 9: 0, 11: 0}
CLEAN = {0: 0, 2: 0, 3: 2, 5: 2, 6: 1, 8: 0, 9: 0, 11: 1}
# flipped (given != clean): 2, 5, 8, 11 with losses 0.9, 0.7, 0.3, 0.05; clean ones: 0.1, 0.2, 0.3, 0.8.
# AUROC = P(loss of a flipped sample > loss of a clean one), ties count 1/2, over 4 x 4 pairs:
# 0.9 beats 4, 0.7 beats 3, 0.3 beats 2 and ties 1, 0.05 beats none
AUROC = (4 + 3 + 2.5 + 0) / 16
# flipped samples predicted as their given label: 2 and 8; as their clean label: 5; 11 as neither
MEMORISED, FLIPPED_CLEAN_ACC = 2 / 4, 1 / 4
# pred != given: 5 (2 vs 1), 9 (1 vs 0), 11 (2 vs 0)
DISAGREE = {5, 9, 11}
CONFIDENT = 4.0  # the logit of the predicted class (others 0): confidence e^4 / (e^4 + 2)


class Table(nn.Module):
    def __init__(self, mapping: dict[int, float | int], dtype) -> None:
        super().__init__()
        values = torch.zeros(N_ALL, dtype=dtype)
        values[list(mapping)] = torch.tensor(list(mapping.values()), dtype=dtype)
        self.register_buffer("values", values)


class StubMethod(pl.LightningModule):
    """Returns the tabled loss and logits of each sample: a 'fixed model' for the callback."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.loss_table, self.pred_table = Table(LOSS, torch.float32), Table(PRED, torch.long)

    def training_step(self, batch, batch_idx):
        index = batch["index"]
        logits = CONFIDENT * nn.functional.one_hot(self.pred_table.values[index], 3).float()
        return {"loss": self.dummy * 0.0, "per_sample_loss": self.loss_table.values[index], "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD([self.dummy], lr=0.0)


class Samples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(TRAIN)

    def __getitem__(self, i: int) -> dict:
        k = TRAIN[i]
        return {"image": torch.zeros(1), "target": torch.tensor(GIVEN[k]), "clean_target": torch.tensor(CLEAN[k]),
                "index": torch.tensor(k)}


class SampleData(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.noisy_targets = torch.zeros(N_ALL, dtype=torch.long)  # the callback sizes its buffers from this

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return torch.utils.data.DataLoader(Samples(), batch_size=3, shuffle=True, generator=g)


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    diag = LabelNoiseDiagnostics()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=TensorBoardLogger(tmp, name="d"),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[diag])
    trainer.fit(StubMethod(), datamodule=SampleData())
    return diag, trainer


def test_batches_mix_the_indices():
    """Otherwise a callback storing by position in the batch could pass by luck."""
    batches = [b["index"].tolist() for b in SampleData().train_dataloader()]
    assert [i for b in batches for i in b] != TRAIN


def test_each_loss_and_prediction_lands_in_its_samples_slot(diagnosed):
    diag, _ = diagnosed
    for k in range(N_ALL):
        if k in LOSS:
            assert diag.loss[k].item() == pytest.approx(LOSS[k]), k
            assert (diag.pred[k].item(), diag.given[k].item(), diag.clean[k].item()) == (PRED[k], GIVEN[k], CLEAN[k])
            assert diag.confidence[k].item() == pytest.approx(math.exp(4) / (math.exp(4) + 2), rel=1e-6)
        else:  # never trained on: left empty
            assert math.isnan(diag.loss[k].item()) and diag.pred[k].item() == -1, k


def test_epoch_metrics_equal_the_hand_counts(diagnosed):
    diag, trainer = diagnosed
    row = diag.history[-1]
    assert row["seen"] == len(TRAIN)
    assert row["flipped_fraction"] == pytest.approx(4 / 8)
    assert row["loss_auroc"] == pytest.approx(AUROC)
    assert row["loss_clean"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.8) / 4)
    assert row["loss_flipped"] == pytest.approx((0.9 + 0.7 + 0.3 + 0.05) / 4)
    assert (row["memorised"], row["flipped_clean_acc"]) == pytest.approx((MEMORISED, FLIPPED_CLEAN_ACC))
    assert row["disagree_fraction"] == pytest.approx(len(DISAGREE) / 8)
    assert trainer.callback_metrics["noise/loss_auroc"].item() == pytest.approx(AUROC)


def test_files_hold_each_samples_values(diagnosed):
    _, trainer = diagnosed
    with open(f"{trainer.log_dir}/suspected_mislabelled.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["index"]) for r in rows} == DISAGREE
    for r in rows:
        k = int(r["index"])
        got = (int(r["given_label"]), int(r["predicted_label"]), int(r["clean_label"]))
        assert got == (GIVEN[k], PRED[k], CLEAN[k])
        assert float(r["loss"]) == pytest.approx(LOSS[k], abs=1e-6)
    with np.load(f"{trainer.log_dir}/per_sample_loss.npz") as z:
        assert z["index"].tolist() == TRAIN
        np.testing.assert_allclose(z["loss"], [LOSS[k] for k in TRAIN], rtol=1e-6)
        assert z["pred"].tolist() == [PRED[k] for k in TRAIN]
