"""Training metrics take hand-computed values, not only the right names.

The network's predictions are fixed by the input (the image *is* the logit
vector, through an identity layer that the optimiser does not move: lr 0), and
the given and clean labels differ in known places, so every accuracy below is
counted by hand from the tables in ``BATCHES``.
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from lightning_modules import Classifier, CoTeaching, MetaWeightNet

C = 4
# per batch: the predicted class, the given (noisy) label, the clean label
BATCHES = [
    {"pred": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1],
     "target": [0, 1, 2, 3, 0, 1, 3, 0, 1, 2],  # right at 0-5: 6 of 10
     "clean": [0, 1, 2, 0, 1, 2, 2, 3, 0, 1]},  # right at 0-2 and 6-9: 7 of 10
    {"pred": [3, 3, 2, 1, 0],
     "target": [3, 3, 2, 1, 0],  # 5 of 5
     "clean": [0, 0, 0, 0, 1]},  # 0 of 5
]
ACC_NOISY = (6 + 5) / 15  # micro average over the epoch (the per-batch mean would be 0.8)
ACC_CLEAN = (7 + 0) / 15


class IdentityBackbone(nn.Module):
    """logits = image, flattened, through a linear layer holding the identity (something to optimise)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(C, C)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(C))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def batch(spec: dict, offset: int) -> dict:
    pred = torch.tensor(spec["pred"])
    scale = 5.0 + 0.5 * torch.arange(len(pred))  # later samples: more confident, smaller loss when right
    return {"image": scale[:, None, None, None] * nn.functional.one_hot(pred, C).float()[:, :, None, None],
            "target": torch.tensor(spec["target"]), "clean_target": torch.tensor(spec["clean"]),
            "index": torch.arange(offset, offset + len(pred))}


class FixedBatches(pl.LightningDataModule):
    image_shape = (C, 1, 1)

    def __init__(self, meta: bool = False, specs: list[dict] = BATCHES):
        super().__init__()
        self.save_hyperparameters({"meta_size": 1 if meta else 0, "noise_rate": 0.5})
        self.batches = [batch(s, 100 * i) for i, s in enumerate(specs)]
        if meta:  # a clean meta batch beside each training batch
            self.batches = [{"train": b, "meta": batch(BATCHES[0], 1000)} for b in self.batches]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None)


def fit(model: pl.LightningModule, meta: bool = False, max_epochs: int = 1, callbacks=(), specs=BATCHES,
        logger=False) -> dict:
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(model, datamodule=FixedBatches(meta, specs))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def frozen_sgd(params):
    return torch.optim.SGD(params, lr=0.0)


def _hand_ce(spec: dict) -> list[float]:
    """Cross-entropy of logits ``scale * one_hot(pred)`` against the given label, by hand."""
    out = []
    for i, (p, t) in enumerate(zip(spec["pred"], spec["target"])):
        s = 5.0 + 0.5 * i
        out.append(math.log(math.exp(s) + C - 1) - (s if p == t else 0.0))
    return out


class KeepOutputs(pl.Callback):
    def __init__(self):
        self.outputs = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.outputs.append(outputs)


def test_classifier_noisy_and_clean_accuracy_by_hand():
    keep = KeepOutputs()
    m = fit(Classifier(IdentityBackbone(), num_classes=C, optimizer=frozen_sgd), callbacks=[keep])
    assert m["train/acc_noisy"] == pytest.approx(ACC_NOISY)
    assert m["train/acc_clean"] == pytest.approx(ACC_CLEAN)
    assert not [k for k in m if k.endswith("_step")]  # epoch values only: no per-step series
    per_batch = [_hand_ce(spec) for spec in BATCHES]
    assert m["train/loss"] == pytest.approx(sum(map(sum, per_batch)) / 15, rel=1e-5)  # sample-weighted
    for out, want in zip(keep.outputs, per_batch):  # what LabelNoiseDiagnostics reads
        torch.testing.assert_close(out["per_sample_loss"], torch.tensor(want), rtol=1e-5, atol=1e-6)
    for out, spec in zip(keep.outputs, BATCHES):  # logits = the images (identity network)
        torch.testing.assert_close(out["logits"], batch(spec, 0)["image"].flatten(1))


def test_meta_weight_net_noisy_and_clean_accuracy_by_hand():
    m = fit(MetaWeightNet(IdentityBackbone(), num_classes=C, optimizer=frozen_sgd), meta=True)
    assert m["train/acc_noisy"] == pytest.approx(ACC_NOISY)
    assert m["train/acc_clean"] == pytest.approx(ACC_CLEAN)


def test_coteaching_label_precision_by_hand():
    """Epoch 1 with R = 0.5: each network keeps round(0.5 * B) samples, the most confident right ones.
    First batch: right at 0-5, most confident last, so 5 of 10 kept: 1-5, of which 1 and 2 have
    target == clean. Second batch: round(2.5) = 2 kept, 3 and 4, none with target == clean."""
    model = CoTeaching(IdentityBackbone(), num_classes=C, forget_rate=0.5, num_gradual=1, lr=1e-12,
                       epoch_decay_start=2)  # lr 1e-12: Adam moves no weight enough to change any ranking
    model.net2.load_state_dict(model.net1.state_dict())
    m = fit(model, max_epochs=2)  # callback_metrics: the last epoch's values
    for k in (1, 2):
        assert m[f"train/label_precision_net{k}"] == pytest.approx((2 + 0) / (5 + 2))
        assert m[f"train/num_selected_net{k}"] == pytest.approx((5 * 10 + 2 * 5) / 15)  # sample-weighted mean
        assert m["train/forget_rate"] == pytest.approx(0.5)


def _frozen_twin_coteaching(**kw) -> CoTeaching:
    model = CoTeaching(IdentityBackbone(), num_classes=C, forget_rate=0.5, num_gradual=1, lr=1e-12,
                       epoch_decay_start=2, **kw)  # epoch 0: R = 0 (everything kept); epoch 1: R = 0.5
    model.net2.load_state_dict(model.net1.state_dict())  # both networks pick the same samples
    return model


def test_coteaching_selected_fraction_per_given_label_by_hand():
    """The picks of the label-precision test above, counted per given label over epoch 2. First batch:
    labels 0/1/2/3 have 3/3/2/2 samples, the picks (positions 1-5) hold 1/2/1/1 of them; second batch:
    1/1/1/2 samples, picks (positions 3, 4) hold labels 1 and 0."""
    m = fit(_frozen_twin_coteaching(), max_epochs=2)
    expected = {0: (1 + 1) / (3 + 1), 1: (2 + 1) / (3 + 1), 2: (1 + 0) / (2 + 1), 3: (1 + 0) / (2 + 2)}
    for label, want in expected.items():
        assert m[f"train/selected_fraction/label_{label}"] == pytest.approx(want)
    assert m["train/selected_fraction_min"] == pytest.approx(0.25)


# label 3's samples are predicted wrong (the largest losses); the right ones grow more confident with position;
# no sample is labelled 2
COLLAPSE = [{"pred": [0, 0, 1, 1, 1, 1, 0, 1], "target": [0, 0, 1, 1, 1, 1, 3, 3], "clean": [0, 0, 1, 1, 1, 1, 3, 3]}]


@pytest.mark.parametrize("selection, label_3, label_0", [("batch", 0.0, 0.0), ("per_class", 0.5, 0.5)])
def test_selected_fraction_shows_a_label_dropping_out_of_batch_wide_selection(selection, label_3, label_0, tmp_path):
    """Batch-wide at R = 0.5 keeps the 4 smallest losses of 8, positions 2-5 (all labelled 1): labels 0 and 3
    get no place. Within each label, half of each label's samples is kept. Label 2 has no sample: no value
    (and not a 0 in the minimum). Read back per epoch from TensorBoard."""
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="sel", version=0)
    fit(_frozen_twin_coteaching(selection=selection), max_epochs=2, specs=COLLAPSE, logger=logger)
    events = EventAccumulator(str(tmp_path / "sel" / "version_0"))
    events.Reload()

    def per_epoch(tag):
        return [e.value for e in events.Scalars(tag)]

    assert per_epoch("train/selected_fraction/label_3") == pytest.approx([1.0, label_3])
    assert per_epoch("train/selected_fraction/label_0") == pytest.approx([1.0, label_0])
    assert per_epoch("train/selected_fraction/label_1") == pytest.approx([1.0, 1.0 if selection == "batch" else 0.5])
    assert "train/selected_fraction/label_2" not in events.Tags()["scalars"]
    assert per_epoch("train/selected_fraction_min") == pytest.approx([1.0, min(label_3, label_0)])
