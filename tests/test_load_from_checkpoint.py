"""``Method.load_from_checkpoint(path)`` with no other argument, for every method, in a fresh process.

The backbone is rebuilt from its ``{class_path, init_args}`` spec saved in the hyper-parameters
(``backbones.spec``); the fresh process gives the same outputs as the trained model.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO
from datamodules import NoisyCIFAR10
from lightning_modules import Classifier, CoTeaching, MetaWeightNet, SimCLR
from lightning_modules import backbones as bb

LOAD_AND_PREDICT = """
import sys, torch
import lightning_modules as lm
x = torch.load(sys.argv[1])
out = {}
for name, path in zip(sys.argv[3::2], sys.argv[4::2]):
    model = getattr(lm, name).load_from_checkpoint(path, map_location="cpu")
    model.eval()
    with torch.no_grad():
        out[name + ":" + path] = model(x)
torch.save(out, sys.argv[2])
"""


def _methods():
    return {
        "Classifier": (Classifier(bb.CNN(width=0.125), loss="gce", gce_q=0.5), {}),
        "CoTeaching": (CoTeaching(bb.MLP(hidden=(16,)), forget_rate=0.2, epoch_decay_start=1, eval_network="mean"), {}),
        "MetaWeightNet": (MetaWeightNet(bb.LeNet(), hidden=8, weight_norm="batch"), {"meta_size": 2}),
        "SimCLR": (SimCLR(bb.CNN(width=0.125, n_outputs=10), projection_dim=16, lr_schedule="constant"),
                   {"augmentation": "simclr"}),
    }


def test_every_method_loads_from_its_checkpoint_alone_in_a_fresh_process(tmp_path, fake_cifar10_dir):
    pl.seed_everything(0)
    x = torch.rand(6, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    expected, args = {}, []
    for name, (model, dm_args) in _methods().items():
        dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=32, val_size=50, **dm_args)
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm)
        path = tmp_path / f"{name}.ckpt"
        trainer.save_checkpoint(path)
        model.eval()
        with torch.no_grad():
            expected[f"{name}:{path}"] = model(x)
        args += [name, str(path)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(tmp_path / "x.pt"), str(tmp_path / "out.pt"),
                           *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-6), key


def test_spec_round_trip_and_a_module_without_spec():
    cnn = bb.CNN(width=0.25, n_outputs=100, dropout_rate=0.1)
    spec = bb.spec(cnn)
    assert spec == {"class_path": "lightning_modules.backbones.CNN",
                    "init_args": {"input_channel": 3, "n_outputs": 100, "dropout_rate": 0.1, "top_bn": False,
                                  "width": 0.25}}
    rebuilt = bb.from_spec(spec)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in cnn.parameters()]
    assert bb.spec(torch.nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="backbone must be an nn.Module or a {class_path, init_args} mapping"):
        bb.from_spec({"init_args": {}})


def test_a_cli_checkpoint_loads_without_arguments(tmp_path, fake_cifar10_dir, monkeypatch):
    """A checkpoint written by train.py (LightningCLI's instantiator path) loads the same way."""
    from test_cli import _tiny_config

    from train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = main(["fit", "--config", str(_tiny_config(tmp_path, fake_cifar10_dir)), "--trainer.max_steps", "2",
                "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"])
    path = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    loaded = Classifier.load_from_checkpoint(path, map_location="cpu")
    assert isinstance(loaded.backbone, bb.CNN) and loaded.backbone.init_args["width"] == 0.125
    x = torch.rand(4, 3, 32, 32)
    cli.model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), cli.model(x), atol=1e-6)
