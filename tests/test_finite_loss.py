"""FiniteLossGuard: every method stops at a NaN loss, before the step, and keeps its last good checkpoint."""

from __future__ import annotations

import math
import sys

import pytest
import pytorch_lightning as pl
import torch

from callbacks.atomic_checkpoint import with_atomic_checkpoint_io
from callbacks.best_and_last import BestAndLastCheckpoint
from callbacks import PeriodicCheckpoint
from callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from datamodules import NoisyCIFAR10
from lightning_modules import Classifier, CoTeaching, MetaWeightNet, SimCLR
from lightning_modules.backbones import CNN

BATCHES = 3  # training batches per epoch


def _poison_from_epoch(model: pl.LightningModule, epoch: int) -> None:
    """From ``epoch`` on, every training forward of the encoder gives NaN (so does every loss)."""
    for module in model.modules():
        if isinstance(module, CNN):
            module.features.register_forward_hook(
                lambda mod, inp, out: out * math.nan if mod.training and model.current_epoch >= epoch else out
            )


def _method(name: str, data_dir):
    dm_args = dict(data_dir=str(data_dir), batch_size=32, val_size=50, noise_type="symmetric", noise_rate=0.2)
    if name == "Classifier":
        return Classifier(CNN(width=0.125)), NoisyCIFAR10(**dm_args)
    if name == "CoTeaching":
        return CoTeaching(CNN(width=0.125), forget_rate=0.2, epoch_decay_start=2), NoisyCIFAR10(**dm_args)
    if name == "MetaWeightNet":
        return MetaWeightNet(CNN(width=0.125), hidden=8), NoisyCIFAR10(meta_size=2, **dm_args)
    return SimCLR(CNN(width=0.125), lr_schedule="constant"), NoisyCIFAR10(augmentation="simclr", **dm_args)


def _trainer(tmp_path, guard: FiniteLossGuard) -> tuple[pl.Trainer, BestAndLastCheckpoint]:
    ckpt = BestAndLastCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)  # last.ckpt at every epoch end
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=3, limit_train_batches=BATCHES, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        plugins=with_atomic_checkpoint_io(None),
        callbacks=[guard, ckpt, PeriodicCheckpoint(every_n_train_steps=1, dirpath=str(tmp_path / "ckpt"))],
    )
    return trainer, ckpt


def _all_finite(path) -> bool:
    state = torch.load(path, weights_only=False)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("name", ["Classifier", "CoTeaching", "MetaWeightNet", "SimCLR"])
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(name, tmp_path, fake_cifar10_dir):
    pl.seed_everything(0)
    model, dm = _method(name, fake_cifar10_dir)
    _poison_from_epoch(model, 1)
    trainer, ckpt = _trainer(tmp_path, FiniteLossGuard())
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, datamodule=dm)
    message = str(err.value)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert message.startswith("training stopped: the training loss is nan at epoch 1, global step "), message
    assert f"the last good checkpoint is {last}" in message or "last-step.ckpt" in message, message
    # the weights never took a NaN step, and no checkpoint holds one
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        assert _all_finite(path), path
    assert torch.load(last, weights_only=False)["epoch"] == 0
    steps_per_batch = 1 if name in ("Classifier", "SimCLR") else 2  # two optimisers step per batch
    step = torch.load(tmp_path / "ckpt" / "last-step.ckpt", weights_only=False)["global_step"]
    assert step == BATCHES * steps_per_batch  # the last finite step: the end of epoch 0


def test_guard_can_be_turned_off(tmp_path, fake_cifar10_dir):
    pl.seed_everything(0)
    model, dm = _method("Classifier", fake_cifar10_dir)
    _poison_from_epoch(model, 1)
    trainer, _ = _trainer(tmp_path, FiniteLossGuard(enabled=False))
    trainer.fit(model, datamodule=dm)  # trains on: the NaN reaches the weights
    assert trainer.current_epoch == 3
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def test_train_py_reports_a_diverged_run_and_keeps_its_folder(tmp_path, fake_cifar10_dir, monkeypatch, capfd):
    """Through the CLI (the guard is on by default): lr 1e8 diverges; one error block, exit code 1."""
    from test_cli import _tiny_config

    from train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    config = _tiny_config(tmp_path, fake_cifar10_dir)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--model.init_args.optimizer.init_args.lr", "1e8",
              "--trainer.max_epochs", "6"])
    out, err = capfd.readouterr()
    assert exit_.value.code == 1
    block = err[err.index("error: "):]
    assert block.startswith("error: training stopped: the training loss is "), err
    assert "Traceback" not in err
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "test_results.json").exists()
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        assert _all_finite(path), path


def test_periodic_checkpoint_writes_no_exception_checkpoint_after_a_non_finite_loss(monkeypatch):
    """Weights can turn non-finite in a step whose loss was finite; the stop that follows must not save them."""
    cb = PeriodicCheckpoint(every_n_train_steps=5)
    saved = []
    monkeypatch.setattr(cb, "_should_save_on_exception", lambda trainer: True)
    monkeypatch.setattr(cb, "_monitor_candidates", lambda trainer: {})
    monkeypatch.setattr(cb, "_save_last_checkpoint", lambda trainer, candidates: saved.append(1))
    cb.on_exception(None, None, NonFiniteLossError("nan"))
    assert saved == []
    cb.on_exception(None, None, RuntimeError("SIGTERM-like stop"))  # any other stop still saves
    assert saved == [1]
