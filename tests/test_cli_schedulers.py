"""Optimisers and schedules are arguments of the methods: no top-level --optimizer / --lr_scheduler
(which would replace the two-optimiser methods' configure_optimizers), and any torch scheduler can be
injected by class_path next to the named schedules (OneCycleLR stepped per step, ReduceLROnPlateau)."""

from __future__ import annotations

import sys

import pytest
import torch

from test_cli import _scalars, _tiny_config

from train import main  # noqa: E402

from lightning_modules import Classifier  # noqa: E402
from lightning_modules.backbones import CNN  # noqa: E402

BATCHES = 4  # training batches per epoch in these runs (limit_train_batches)


@pytest.fixture(autouse=True)
def _argv(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)


def _run(tmp_path, data_dir, extra: list[str]):
    config = _tiny_config(tmp_path, data_dir)
    return main(["fit", "--config", str(config), "--trainer.limit_train_batches", str(BATCHES),
                 "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", *extra])


def test_no_top_level_optimizer_or_lr_scheduler(tmp_path, fake_cifar10_dir, printed_config, capsys):
    config = _tiny_config(tmp_path, fake_cifar10_dir)
    printed = printed_config(["fit", "--config", str(config)], cwd=tmp_path)
    assert "optimizer" not in printed and "lr_scheduler" not in printed, sorted(printed)
    assert printed["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.Adam"
    for arg in ("--optimizer", "--lr_scheduler"):
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", str(config), arg, "torch.optim.SGD"])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: unrecognized arguments: {arg} torch.optim.SGD")


def test_one_cycle_through_the_cli_steps_every_optimiser_step(tmp_path, fake_cifar10_dir):
    total = 2 * BATCHES  # two epochs
    schedule = ('{"class_path": "torch.optim.lr_scheduler.OneCycleLR", '
                f'"init_args": {{"max_lr": 0.01, "total_steps": {total + 1}}}}}')
    cli = _run(tmp_path, fake_cifar10_dir, ["--model.init_args.lr_scheduler", schedule,
                                            "--model.init_args.lr_scheduler_interval", "step"])
    config = cli.trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR) and config.interval == "step"
    # the reference: torch's OneCycleLR on its own optimiser, stepped as often as the run stepped
    reference_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.003)
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=0.01, total_steps=total + 1)
    for _ in range(total):
        reference_opt.step()
        reference.step()
    assert cli.trainer.global_step == total
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(reference_opt.param_groups[0]["lr"])


def test_reduce_on_plateau_through_the_cli_follows_val_loss(tmp_path, fake_cifar10_dir):
    epochs = 4
    cli = _run(tmp_path, fake_cifar10_dir, [
        "--trainer.max_epochs", str(epochs),
        "--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "--model.init_args.lr_scheduler.init_args.factor", "0.5",
        "--model.init_args.lr_scheduler.init_args.patience", "0",
        # mode max on a loss that mostly falls: several reductions in four epochs, so the lr tells
        "--model.init_args.lr_scheduler.init_args.mode", "max",
    ])
    assert isinstance(cli.trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    val_loss = _scalars(tmp_path / "runs" / "tiny" / "version_0")["val/loss"]
    assert len(val_loss) == epochs
    # ReduceLROnPlateau's rule by hand (mode max, rel threshold 1e-4, patience 0): halve after each epoch
    # whose val/loss is not above best * (1 + 1e-4)
    lr, best = 0.003, -float("inf")
    for v in val_loss:
        if v > best * (1 + 1e-4) if best > 0 else v > best:
            best = v
        else:
            lr *= 0.5
    assert lr < 0.003, val_loss  # the case tests something: at least one reduction
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr)


def test_named_schedule_and_injected_scheduler_are_exclusive():
    def one_cycle(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)

    with pytest.raises(ValueError, match=r"set either lr_scheduler or lr_schedule/warmup_epochs, not both "
                                         r"\(got lr_schedule 'cosine'"):
        Classifier(CNN(width=0.125), lr_schedule="cosine", lr_scheduler=one_cycle)
    with pytest.raises(ValueError, match=r"lr_scheduler_interval must be 'step' or 'epoch', got 'batch'"):
        Classifier(CNN(width=0.125), lr_scheduler=one_cycle, lr_scheduler_interval="batch")
