"""configs/inspect.yaml stacked on every method's config: a few steps in one process, files checked.

A callback that assumes one batch layout (``batch["index"]``) or one step output
breaks a method it was not written with (Meta-Weight-Net's batch is
``{"train": ..., "meta": ...}``); each method runs here with every callback on.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import REPO

TINY_CNN = ["--model.init_args.backbone", "lightning_modules.backbones.CNN",
            "--model.init_args.backbone.init_args.n_outputs", "10",
            "--model.init_args.backbone.init_args.width", "0.125"]

# method config stack -> extra arguments (a tiny network in place of the config's ResNet where needed)
METHODS = {
    "classifier": (["quick.yaml"], []),
    "coteaching": (["coteaching/cifar10.yaml"], [*TINY_CNN, "--model.init_args.epoch_decay_start", "1"]),
    "coteaching_plus_auto": (["coteaching/cifar10.yaml"], [
        *TINY_CNN, "--model.init_args.epoch_decay_start", "2", "--model.init_args.mode", "coteaching_plus",
        "--model.init_args.forget_rate", "auto", "--model.init_args.auto_warmup_epochs", "1",
        "--trainer.max_epochs", "2"]),
    "meta_weight_net": (["mwnet/base.yaml"], [*TINY_CNN, "--data.init_args.meta_size", "2",
                                              "--model.init_args.milestones", "[1]"]),
    "simclr": (["simclr/cpu_cifar10.yaml"], ["--model.init_args.warmup_epochs", "0"]),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_callback_runs_with_every_method(name, fake_cifar10_dir, tmp_path):
    import train

    configs, extra = METHODS[name]
    args = ["fit"]
    for c in [*configs, "inspect.yaml"]:
        args += ["--config", str(REPO / "configs" / c)]
    args += [
        "--data.init_args.data_dir", str(fake_cifar10_dir), "--data.init_args.download", "false",
        "--data.init_args.train_subset", "null", "--data.init_args.val_size", "100",
        "--data.init_args.batch_size", "32", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=ddp_probe.DumpState", f"--trainer.callbacks.folder={tmp_path / 'state'}", *extra,
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when pytest's own arguments are present
    try:
        cli = train.main(args)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)  # the tests after this one keep their thread count
    trainer = cli.trainer
    assert trainer.state.finished and trainer.global_step > 0
    (run,) = (tmp_path / "runs").glob("*/version_*")
    seen = torch.load(tmp_path / "state" / "rank0.pt", weights_only=False)["seen_indices"]
    assert (run / "filters_start.png").is_file()
    if name == "simclr":  # self-supervised: no per-sample classification loss, no test
        assert not (run / "per_sample_loss.npz").exists()
        return
    saved = np.load(run / "per_sample_loss.npz")
    assert sorted(saved["index"].tolist()) == sorted(set(seen))  # every trained sample, each once
    assert np.isfinite(saved["loss"]).all()
    counts = np.loadtxt(run / "confusion_test.csv", delimiter=",", skiprows=1)
    assert counts.sum() == 200
    assert (run / "mistakes_test.csv").is_file()
