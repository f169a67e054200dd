"""Detection of wrong labels: the metrics on hand-computed cases, the flagged list, and the callback
at the end of a real (tiny) fit, checked against a self-confidence computed here from the weights."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from callbacks.detection import MislabelDetection, detection_metrics, flagged_rows
from datamodules import NoisyCIFAR10
from lightning_modules import Classifier, DivideMix
from lightning_modules.backbones import CNN


def test_metrics_by_hand():
    score = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
    flipped = torch.tensor([False, False, True, True, False, True])
    m = detection_metrics(score, flipped, threshold=0.5)
    # flipped scores {0.3, 0.6, 0.1} below clean {0.9, 0.8, 0.2}: 2 + 2 + 3 of 9 pairs
    assert m["auroc"] == pytest.approx(7 / 9)
    # flagged (< 0.5): samples 2, 4, 5, of which 2 and 5 are flipped
    assert m["num_flagged"] == 3 and m["num_flipped"] == 3
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    m = detection_metrics(score, flipped, threshold=0.25)  # flagged: 4, 5 -> precision 1/2, recall 1/3
    assert (m["precision"], m["recall"]) == pytest.approx((0.5, 1 / 3)) and m["f1"] == pytest.approx(0.4)


def test_metrics_ties_and_undefined_cases():
    assert detection_metrics(torch.tensor([0.5, 0.5]), torch.tensor([True, False]))["auroc"] == pytest.approx(0.5)
    m = detection_metrics(torch.tensor([0.9, 0.1]), torch.tensor([False, False]))
    assert m["auroc"] is None and m["recall"] is None and m["precision"] == 0.0 and m["f1"] is None
    m = detection_metrics(torch.tensor([0.9, 0.7]), torch.tensor([True, False]))
    assert m["precision"] is None and m["recall"] == 0.0 and m["auroc"] == 0.0  # the flipped one looks cleanest
    with pytest.raises(ValueError, match="1-D of one length"):
        detection_metrics(torch.zeros(3), torch.zeros(2, dtype=torch.bool))


def test_flagged_rows_least_clean_first_with_given_labels_by_sample_index():
    given = torch.tensor([5, 6, 7, 8, 9, 4, 3])  # by sample index
    scores = {"index": torch.tensor([6, 1, 3, 4]), "score": torch.tensor([0.4, 0.1, 0.7, 0.1]),
              "suggested": torch.tensor([0, 1, 2, 3])}
    assert flagged_rows(scores, given, 0.5) == [(1, 6, 1, pytest.approx(0.1)), (4, 9, 3, pytest.approx(0.1)),
                                                (6, 3, 0, pytest.approx(0.4))]


def fit_with_detection(model, data_dir, tmp_path, **data) -> tuple[pl.LightningModule, NoisyCIFAR10, dict]:
    dm = NoisyCIFAR10(data_dir=str(data_dir), batch_size=32, val_size=100, noise_type="symmetric",
                      noise_rate=0.4, noise_seed=0, **data)
    logger = TensorBoardLogger(str(tmp_path), name="run", version="v")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_train_batches=4,
                         limit_val_batches=1, callbacks=[MislabelDetection()])
    trainer.fit(model, datamodule=dm)
    out = tmp_path / "run" / "v" / "detection"
    return model, dm, json.loads((out / "detection.json").read_text())


def test_callback_scores_a_classifier_by_self_confidence(fake_cifar10_dir, tmp_path):
    torch.manual_seed(0)
    model, dm, result = fit_with_detection(Classifier(CNN(n_outputs=10, width=0.125)), fake_cifar10_dir, tmp_path)
    model.eval()
    idx = dm.train_indices
    with torch.no_grad():
        p = model(dm.eval_transform(dm.training_set_images(idx))).softmax(1)
    given = dm.noisy_targets[idx]
    conf = p[torch.arange(len(idx)), given].numpy()
    flipped = (given != dm.clean_targets[idx]).numpy()
    flagged = conf < 0.5
    assert result["score"] == "self_confidence" and result["method"] == "Classifier"
    assert result["num_flagged"] == int(flagged.sum()) and result["num_flipped"] == int(flipped.sum())
    assert result["precision"] == pytest.approx((flagged & flipped).sum() / flagged.sum(), abs=1e-9)
    assert result["recall"] == pytest.approx((flagged & flipped).sum() / flipped.sum(), abs=1e-9)
    # AUROC by pair counting: a flipped sample's confidence below a clean one's (ties count one half)
    a, b = conf[flipped][:, None], conf[~flipped][None, :]
    assert result["auroc"] == pytest.approx(((a < b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size), abs=1e-4)
    with open(tmp_path / "run" / "v" / "detection" / "suspected_mislabelled.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == int(flagged.sum())
    first = rows[0]
    assert float(first["score"]) == pytest.approx(conf.min(), abs=1e-6)
    assert int(first["given_label"]) == int(dm.noisy_targets[int(first["index"])])
    assert int(first["suggested_label"]) == int(p[int(np.argmin(conf))].argmax())


def test_callback_uses_dividemix_own_posterior(fake_cifar10_dir, tmp_path):
    torch.manual_seed(0)
    model = DivideMix(CNN(n_outputs=10, width=0.125), warmup_epochs=1, rampup_length=1.0)
    model, dm, result = fit_with_detection(model, fake_cifar10_dir, tmp_path, augmentation="crop_flip_twice")
    assert result["score"] == "method" and result["method"] == "DivideMix"
    scores = model.detection_scores()  # recomputed from the same final weights
    flipped = (dm.noisy_targets != dm.clean_targets)[scores["index"]]
    flagged = scores["score"] < 0.5
    assert result["num_flagged"] == int(flagged.sum())
    assert result["precision"] == pytest.approx(float((flagged & flipped).sum() / flagged.sum()))
    assert torch.equal(scores["index"], dm.train_indices)
    assert ((scores["score"] >= 0) & (scores["score"] <= 1)).all()


def test_coteaching_counts_how_often_each_sample_was_picked():
    from types import SimpleNamespace

    from lightning_modules import CoTeaching

    model = CoTeaching(CNN(n_outputs=10, width=0.125), forget_rate=0.5)
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(noisy_targets=torch.zeros(6)))
    index = torch.tensor([4, 1, 3])
    model._count_selection(index, torch.tensor([0, 2]), torch.tensor([0]))  # net 1 picks 4, 3; net 2 picks 4
    model._count_selection(torch.tensor([1, 0]), torch.tensor([0]), torch.tensor([0, 1]))  # 1; 1, 0
    seen, picked = model._selection
    assert seen.tolist() == [2, 4, 0, 2, 2, 0]
    assert picked.tolist() == [1, 2, 0, 1, 2, 0]  # sample 1: 0 of 2 in the first step, 2 of 2 in the second


def test_callback_uses_coteaching_selection_frequency(fake_cifar10_dir, tmp_path):
    from lightning_modules import CoTeaching

    torch.manual_seed(0)
    model = CoTeaching(CNN(n_outputs=10, width=0.125), forget_rate=0.5, num_gradual=1, epoch_decay_start=1)
    model, dm, result = fit_with_detection(model, fake_cifar10_dir, tmp_path)
    assert result["score"] == "method" and result["method"] == "CoTeaching"
    seen, picked = model._selection[:, dm.train_indices]
    score = picked / seen.clamp_min(1)  # the fraction of picks, here from the raw counts
    flipped = (dm.noisy_targets != dm.clean_targets)[dm.train_indices]
    flagged = score < 0.5
    assert result["num_flagged"] == int(flagged.sum()) and result["num_flagged"] > 0
    assert result["precision"] == pytest.approx(float((flagged & flipped).sum() / flagged.sum()))


def test_callback_uses_meta_weight_net_weights(fake_cifar10_dir, tmp_path):
    import torch.nn.functional as F

    from lightning_modules import MetaWeightNet

    torch.manual_seed(0)
    model = MetaWeightNet(CNN(n_outputs=10, width=0.125))
    model, dm, result = fit_with_detection(model, fake_cifar10_dir, tmp_path, meta_size=2)
    assert result["score"] == "method" and result["method"] == "MetaWeightNet"
    model.eval()
    idx = dm.train_indices
    with torch.no_grad():
        logits = model.backbone(dm.eval_transform(dm.training_set_images(idx)))
        weight = model.weighting_net(F.cross_entropy(logits, dm.noisy_targets[idx], reduction="none"))
    flipped = (dm.noisy_targets != dm.clean_targets)[idx]
    flagged = weight < 0.5
    assert result["num_flagged"] == int(flagged.sum())
    a, b = weight[flipped][:, None], weight[~flipped][None, :]
    assert result["auroc"] == pytest.approx(float(((a < b).sum() + 0.5 * (a == b).sum()) / (a.numel() * b.numel())),
                                            abs=1e-4)


@pytest.mark.parametrize("method", ["Classifier", "CoTeaching"])
def test_a_finished_run_is_scored_from_its_checkpoint_through_validate(method, fake_cifar10_dir, tmp_path,
                                                                       monkeypatch):
    """``train.py validate --ckpt_path last.ckpt`` with the callback measures what the fit measured at its end
    (the last weights and, for co-teaching, the selection counts restored from the checkpoint)."""
    import sys

    import yaml

    from test_cli import _tiny_config
    from train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    config = _tiny_config(tmp_path, fake_cifar10_dir)
    spec = yaml.safe_load(config.read_text())
    spec["model"]["class_path"] = f"lightning_modules.{method}"
    if method == "CoTeaching":
        spec["model"]["init_args"].update(forget_rate=0.2, num_gradual=1)
    config.write_text(yaml.safe_dump(spec))
    main(["fit", "--config", str(config), "--trainer.callbacks+=callbacks.MislabelDetection",
          "--trainer.logger.init_args.version", "fit"])
    run = tmp_path / "runs" / "tiny" / "fit"
    fitted = json.loads((run / "detection" / "detection.json").read_text())
    main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--trainer.logger.init_args.version", "validate"])
    scored = json.loads((tmp_path / "runs" / "tiny" / "validate" / "detection" / "detection.json").read_text())
    assert fitted["score"] == ("method" if method == "CoTeaching" else "self_confidence")
    assert fitted["num_flipped"] > 0 and scored == fitted
