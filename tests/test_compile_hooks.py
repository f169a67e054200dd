"""When and what ``Performance(compile=True)`` compiles, and what it refuses.

The dynamo ``eager`` backend stands in for inductor here (same tracing, no code
generation, so no C++ compiler and no tens of seconds): a probe module inside
the encoder records whether it runs while dynamo traces it.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from datamodules import NoisyCIFAR10
from lightning_modules import Classifier, MetaWeightNet
from lightning_modules.backbones import MLP, Backbone
from callbacks.performance import Performance
from lightning_modules.simclr import SimCLR


class CallProbe(nn.Module):
    """Identity that records (traced by dynamo?, gradients on?) at every call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((torch.compiler.is_compiling(), torch.is_grad_enabled()))
        return x


class ProbedBackbone(Backbone):
    def __init__(self, n_outputs: int = 10):
        super().__init__()
        self.probe = CallProbe()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), self.probe)
        self.head = nn.Linear(8, n_outputs)
        self.feature_dim = 8


@pytest.fixture
def eager_backend(monkeypatch):
    """``nn.Module.compile`` with dynamo's eager backend (whatever else it is asked)."""
    original = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: original(self, backend="eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def fit_one_step(data_dir, model, **data) -> None:
    dm = NoisyCIFAR10(data_dir=str(data_dir), batch_size=16, val_size=100, **data)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[Performance(compile=True)])
    trainer.fit(model, datamodule=dm)


def test_the_setup_probe_runs_uncompiled_and_training_compiled(fake_cifar10_dir, eager_backend):
    backbone = ProbedBackbone()
    fit_one_step(fake_cifar10_dir, Classifier(backbone))
    probe_calls = [c for c in backbone.probe.calls if not c[1]]  # check_backbone's no-grad forward in setup
    training_calls = [c for c in backbone.probe.calls if c[1]]
    assert probe_calls and not any(compiling for compiling, _ in probe_calls), "compiled for the setup probe"
    assert training_calls and all(compiling for compiling, _ in training_calls)


def test_simclr_training_runs_the_compiled_encoder(fake_cifar10_dir, eager_backend):
    backbone = ProbedBackbone()
    fit_one_step(fake_cifar10_dir, SimCLR(backbone, projection_dim=4), augmentation="simclr")
    training_calls = [c for c in backbone.probe.calls if c[1]]
    assert training_calls and all(compiling for compiling, _ in training_calls), "SimCLR's encoder never compiled"


def test_meta_weight_net_with_compile_is_refused_before_training():
    model = MetaWeightNet(MLP(hidden=(8,)))
    with pytest.raises(ValueError, match="cannot be used with MetaWeightNet.*double backward.*compile: false"):
        Performance(compile=True).setup(None, model, "fit")
    Performance(channels_last=True).setup(None, model, "fit")  # the other knobs stay available
