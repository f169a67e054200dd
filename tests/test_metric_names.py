"""One metric naming scheme for every method (read back from TensorBoard event files), and the
HParams view of a default train.py run filled with real metrics instead of ``hp_metric = -1``."""

from __future__ import annotations

import sys

import pytest
import pytorch_lightning as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from test_load_from_checkpoint import _methods

from datamodules import NoisyCIFAR10

COMMON = {"train/loss", "train/acc_noisy", "train/acc_clean", "val/loss", "val/acc", "val/f1"}


def _events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def _with_dividemix() -> dict:
    from lightning_modules import DivideMix
    from lightning_modules.backbones import CNN

    return {**_methods(), "DivideMix": (DivideMix(CNN(width=0.125), warmup_epochs=1),
                                        {"augmentation": "crop_flip_twice"})}


@pytest.mark.parametrize("name", ["Classifier", "CoTeaching", "MetaWeightNet", "SimCLR", "DivideMix"])
def test_every_method_logs_the_same_names(name, tmp_path, fake_cifar10_dir):
    pl.seed_everything(0)
    model, dm_args = _with_dividemix()[name]
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=32, val_size=50, **dm_args)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="m", default_hp_metric=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    scalars = _events(trainer.log_dir).Tags()["scalars"]
    suffixed = [t for t in scalars if t.endswith(("_step", "_epoch"))]
    assert not suffixed, suffixed  # no train/loss_step / train/loss_epoch
    expected = {"train/loss"} if name == "SimCLR" else COMMON  # SimCLR: no labels, no validation step
    assert expected <= set(scalars), sorted(scalars)
    assert len(_events(trainer.log_dir).Scalars("train/loss")) == 2  # one value per epoch


def test_default_cli_run_fills_the_hparams_view(tmp_path, fake_cifar10_dir, monkeypatch):
    from test_cli import _tiny_config

    from train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    main(["fit", "--config", str(_tiny_config(tmp_path, fake_cifar10_dir)), "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"])
    events = _events(tmp_path / "runs" / "tiny" / "version_0")
    scalars = events.Tags()["scalars"]
    assert "hp_metric" not in scalars, sorted(scalars)
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"val/acc", "test/acc", "test_best/acc", "train/loss"} <= metrics, metrics
    assert all(tag in scalars for tag in ("val/acc", "test/acc", "test_best/acc", "train/loss"))  # real values
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["loss"].string_value == "ce"
    assert start.hparams["noise_rate"].number_value == pytest.approx(0.2)
