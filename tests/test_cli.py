"""train.py: a real fit + test as subprocesses on the tiny data, --help, and every YAML in configs/."""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import nn

from conftest import REPO, run_train, score_test_split

from lightning_modules.backbones import CNN  # noqa: E402
from train import main  # noqa: E402

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _tiny_config(tmp_path: Path, data_dir: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"}},
        },
        "model": {
            "class_path": "lightning_modules.Classifier",
            "init_args": {
                "backbone": {"class_path": "lightning_modules.backbones.CNN",
                             "init_args": {"n_outputs": 10, "width": 0.125}},
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}},
            },
        },
        "data": {
            "class_path": "datamodules.NoisyCIFAR10",
            "init_args": {"data_dir": str(data_dir), "batch_size": 64, "val_size": 100,
                          "noise_type": "symmetric", "noise_rate": 0.2},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _scalars(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fit_then_test_from_the_command_line(tmp_path, fake_cifar10_dir, monkeypatch):
    # one torch thread: on a shared CPU, OpenMP threads spin-waiting for each other make this test 3x slower
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = _tiny_config(tmp_path, fake_cifar10_dir)
    proc = run_train(["fit", "--config", str(config)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log_dir = tmp_path / "runs" / "tiny" / "version_0"
    ckpts = sorted(p.name for p in (log_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts
    best = [n for n in ckpts if n.startswith("best-epoch")]
    assert len(best) == 1, ckpts
    assert list(log_dir.glob("events.out.tfevents.*"))
    scalars = _scalars(log_dir)
    assert len(scalars["val/acc"]) == 2  # one per epoch
    for tag in ("train/loss", "train/acc_noisy", "train/acc_clean", "val/f1", "test/acc", "test/f1",
                "test_best/acc"):
        assert tag in scalars, (tag, sorted(scalars))
    assert (log_dir / "config.yaml").is_file() and (log_dir / "noisy_labels.npz").is_file()

    results = json.loads((log_dir / "test_results.json").read_text())
    assert set(results) == {"test", "test_best"}
    assert results["test"]["checkpoint"].endswith("last.ckpt")
    assert Path(results["test_best"]["checkpoint"]).name == best[0]
    assert results["test_best"]["val_acc"] == pytest.approx(max(scalars["val/acc"]), abs=1e-6)
    test_acc = results["test"]["test/acc"]
    acc, f1 = score_test_split(log_dir / "checkpoints" / "last.ckpt", CNN(n_outputs=10, width=0.125), fake_cifar10_dir)
    assert test_acc == pytest.approx(acc, abs=1e-6) and results["test"]["test/f1"] == pytest.approx(f1, abs=1e-6)
    assert scalars["test/acc"] == [pytest.approx(test_acc, abs=1e-6)]
    assert f"test: acc {test_acc:.4f}" in proc.stdout

    # `train.py test` on the last checkpoint gives the same test accuracy
    proc = run_train(["test", "--config", str(log_dir / "config.yaml"),
                      "--trainer.logger.init_args.save_dir", str(tmp_path / "again"),
                      "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = _scalars(tmp_path / "again" / "tiny" / "version_0")
    assert again["test/acc"] == [pytest.approx(test_acc, abs=1e-6)]


def _help(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_lists_subcommands_model_and_data_arguments(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    top = _help(capsys, ["--help"])
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in top
    fit = _help(capsys, ["fit", "--help"])
    for opt in ("--model", "--data", "--trainer.max_epochs", "--checkpoint.monitor", "--seed_everything"):
        assert opt in fit, opt
    model = _help(capsys, ["fit", "--model.help", "lightning_modules.Classifier"])
    for opt in ("--model.loss", "--model.gce_q", "--model.lr_schedule", "--model.backbone", "--model.optimizer"):
        assert opt in model, opt
    data = _help(capsys, ["fit", "--data.help", "datamodules.NoisyCIFAR10"])
    for opt in ("--data.noise_type", "--data.noise_rate", "--data.human_labels", "--data.noisy_labels_path",
                "--data.val_size", "--data.download"):
        assert opt in data, opt


# ------------------------------------------------------------------ configs
def _stack_for(config: Path) -> list[Path]:
    """The --config files a YAML is meant to be used with.

    A full config (``model`` and ``data`` with their ``class_path``) stands alone. A partial one is stacked as
    its header comment says (``--config A --config B`` or "stack on A.yaml"); without
    either, on configs/quick.yaml.
    """
    text = config.read_text()
    body = yaml.safe_load(text) or {}
    if (body.get("model") or {}).get("class_path") and (body.get("data") or {}).get("class_path"):
        return [config]
    header = " ".join(line.lstrip("#").rstrip("\\").strip() for line in text.splitlines() if line.startswith("#"))
    named = [(REPO / p).resolve() for p in re.findall(r"(?:--config|[Ss]tack(?:ed)? on)\s+(\S+\.yaml)", header)]
    bases = [p for p in named if p != config.resolve()]
    if not bases:
        return [REPO / "configs" / "quick.yaml", config]
    stack: list[Path] = []
    for base in bases:  # a base may itself be partial (e.g. a noise file on top of a method config)
        stack += _stack_for(base) if base.is_file() else [base]
    return list(dict.fromkeys([*stack, config.resolve()]))  # in order, without repeats


def _tiny_image_folder(root: Path, num_classes: int = 10) -> Path:
    from PIL import Image

    for c in range(num_classes):
        (root / "train" / f"class{c}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (20 * c, 0, 0)).save(root / "train" / f"class{c}" / "0.png")
    return root


def test_every_config_has_a_header_comment():
    assert CONFIGS, "no configs found"
    for config in CONFIGS:
        assert config.read_text().lstrip().startswith("#"), f"{config} lacks its header comment"


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO / "configs")) for c in CONFIGS])
def test_config_parses_and_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)  # anything a logger or callback might create lands in tmp
    stack = _stack_for(config)
    for path in stack:
        assert path.is_file(), f"{config} is stacked on {path}, which does not exist"
    args = [a for p in stack for a in ("--config", str(p))]
    # no data is read (the data folder is an empty tmp dir) and no GPU is needed to instantiate
    data_args: dict = {}
    for path in stack:
        data_args.update(((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("init_args") or {})
    if "data_dir" in data_args:  # CIFAR: an empty folder (nothing is read before setup)
        args += ["--data.init_args.data_dir", str(tmp_path)]
    if "root" in data_args:  # image folders are scanned when constructed: 10 classes of one image
        args += ["--data.init_args.root", str(_tiny_image_folder(tmp_path / "images"))]
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    if any("init_from:" in p.read_text() for p in stack):  # the pretrained checkpoint is made by another run;
        args += ["--model.init_args.init_from", "null"]       # loading it is tested in test_simclr.py
    if any("SLURMEnvironment" in p.read_text() for p in stack):  # only instantiable inside a SLURM job: fake one
        for key, value in {"SLURM_JOB_ID": "1", "SLURM_JOB_NAME": "test", "SLURM_NTASKS": "1",
                           "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0",
                           "SLURM_LOCALID": "0", "SLURM_NODELIST": "localhost"}.items():
            monkeypatch.setenv(key, value)
    cli = main(args, run=False)
    assert isinstance(cli.model, pl.LightningModule) and isinstance(cli.datamodule, pl.LightningDataModule)
    assert isinstance(cli.trainer, pl.Trainer)
    kinds = collections.Counter(type(cb).__name__ for cb in cli.trainer.callbacks)
    assert not {k: n for k, n in kinds.items() if n > 1}, f"{config}: a callback is built twice: {kinds}"
    num_classes = getattr(cli.datamodule, "num_classes", None)
    if num_classes is not None and "num_classes" in cli.model.hparams:
        assert cli.model.hparams.num_classes == num_classes  # linked from the data
    if num_classes is not None and "num_classes" in cli.model.hparams:
        # every network the method trains (one backbone, or co-teaching's two) gives num_classes logits
        nets = {name: net for name in ("backbone", "net1", "net2")
                if isinstance(net := getattr(cli.model, name, None), nn.Module)}
        assert nets, f"{config}: {type(cli.model).__name__} has none of backbone, net1, net2 to check"
        image_shape = getattr(cli.datamodule, "image_shape", (3, 32, 32))
        for name, net in nets.items():
            with torch.no_grad():
                n = net.eval()(torch.zeros(1, *image_shape)).shape[-1]
            assert n == num_classes, f"{config}: {name} gives {n} outputs for {num_classes} classes"


def test_a_configured_default_callback_replaces_the_default(tmp_path, monkeypatch):
    """LightningCLI appends train.py's default callbacks to a config's list; a config that lists a
    LearningRateMonitor of its own gets exactly one, with its own arguments, and ExactResume stays."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "own_monitor.yaml"
    own.write_text("trainer:\n  callbacks:\n    - class_path: pytorch_lightning.callbacks.LearningRateMonitor\n"
                   "      init_args: {logging_interval: step}\n")
    cli = main(["--config", str(REPO / "tests" / "configs" / "tiny.yaml"), "--config", str(own),
                "--data.init_args.data_dir", str(tmp_path), "--trainer.logger", "false"], run=False)
    monitors = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "LearningRateMonitor"]
    assert [m.logging_interval for m in monitors] == ["step"]
    assert sum(type(cb).__name__ == "ExactResume" for cb in cli.trainer.callbacks) == 1
