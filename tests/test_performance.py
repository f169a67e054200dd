"""channels_last, torch.compile and resident data change speed, not results (CPU checks).

Each knob is switched on for deterministic training steps and the final
weights are compared with the same steps without it. A callback also checks
that the knob was really in effect during training, so a no-op would fail.

Knobs that change the arithmetic (channels_last picks other conv kernels,
compile fuses ops) are compared after ONE step: this tiny BN network on the
fake data is so sensitive that a 1e-6 perturbation of the initial weights
grows to ~1e-3 after three steps (measured), which would hide nothing but
also prove nothing. Resident data does not change the arithmetic: three
steps, bit-identical.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from datamodules import NoisyCIFAR10
from datamodules.resumable import resident
from datamodules.batches import IndexedTensorDataset
from lightning_modules import Classifier
from lightning_modules.backbones import CNN, MLP
from callbacks.performance import Performance, to_channels_last
from lightning_modules.method_base import find_backbones


class Probe(pl.Callback):
    """Records the layout of the first conv weight at every step."""

    def __init__(self):
        self.weight_cl: list[bool] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d))
        self.weight_cl.append(conv.weight.is_contiguous(memory_format=torch.channels_last))


class ImageProbe(pl.Callback):
    """Records the layout of the images the model receives."""

    def __init__(self):
        self.image_cl: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # runs after Performance (callbacks are called in order): sees what training_step will see
        self.image_cl.append(batch["image"].is_contiguous(memory_format=torch.channels_last))


LR = 0.01


def fit(data_dir, backbone, callbacks=(), steps: int = 3, **data_kwargs) -> tuple[Classifier, pl.Trainer]:
    pl.seed_everything(0)
    dm = NoisyCIFAR10(data_dir=str(data_dir), batch_size=32, val_size=100, noise_type="symmetric", noise_rate=0.2,
                      **data_kwargs)
    model = Classifier(backbone, optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=0.0))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, deterministic=True, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=list(callbacks),
    )
    trainer.fit(model, datamodule=dm)
    return model, trainer


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()  # compile in place keeps the state-dict keys
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst}"


@pytest.fixture(scope="module")
def plain_cnn(fake_cifar10_dir) -> dict:
    """Weights after 1 and after 3 plain steps."""
    out = {}
    for steps in (1, 3):
        torch.manual_seed(0)
        model, _ = fit(fake_cifar10_dir, CNN(width=0.125), steps=steps)
        out[steps] = weights(model)
    return out


def test_channels_last_trains_the_same_weights(fake_cifar10_dir, plain_cnn):
    torch.manual_seed(0)
    probe, images = Probe(), ImageProbe()
    model, _ = fit(fake_cifar10_dir, CNN(width=0.125), [Performance(channels_last=True), images, probe], steps=1)
    assert probe.weight_cl == [True] and images.image_cl == [True]  # the knob was on
    assert_close(weights(model), plain_cnn[1], atol=1e-5)  # other conv kernels: float rounding only


def test_resident_on_device_trains_the_same_weights(fake_cifar10_dir, plain_cnn):
    torch.manual_seed(0)
    model, trainer = fit(fake_cifar10_dir, CNN(width=0.125), resident_on_device=True)
    device = trainer.strategy.root_device
    assert trainer.train_dataloader.dataset.images.device == device
    assert_close(weights(model), plain_cnn[3], atol=0.0)  # on CPU the data path is the same: bit-identical


def test_resident_copies_shared_tensors_once_and_keeps_rows():
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).view(5, 3, 2, 2)
    labels = torch.tensor([0, 1, 2, 3, 4])
    train = IndexedTensorDataset(images, labels, labels, torch.tensor([0, 2, 4]))
    val = IndexedTensorDataset(images, labels, labels, torch.tensor([1, 3]))
    meta = torch.device("meta")  # any other device shows the move; no GPU needed
    t, v = resident(train, meta), resident(val, meta)
    assert t.images.device.type == "meta" and t.indices.device.type == "meta"
    assert t.images is v.images  # the image tensor is copied to the device once
    assert train.images.device.type == "cpu"  # the original dataset is untouched
    cpu_again = resident(train, torch.device("cpu"))
    assert torch.equal(cpu_again.__getitems__([0, 2])["image"], images[[0, 4]])


def _batches_on(device: torch.device, data_dir, resident_on_device: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The first batch of each loader of a datamodule attached to a trainer whose device is ``device``."""
    dm = NoisyCIFAR10(data_dir=str(data_dir), batch_size=32, val_size=100, meta_size=2,
                      resident_on_device=resident_on_device)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, logger=None,
                                 strategy=SimpleNamespace(root_device=device))
    dm.setup("fit")
    train, _, _ = next(iter(dm.train_dataloader()))  # {"train": batch, "meta": batch}
    loaders = {"val": dm.val_dataloader(), "test": dm.test_dataloader()}
    return {"train": train["train"], "meta": train["meta"]} | {k: next(iter(v)) for k, v in loaders.items()}


def test_resident_on_device_gathers_every_batch_on_the_device(fake_cifar10_dir):
    """On CPU the option cannot show in a training run (images are already on the device), so the
    datamodule is attached to a trainer on the ``meta`` device: each batch must come out of the loader
    already there, gathered from the resident tensors (no host copy per batch); without the option
    the same loaders give host batches."""
    meta = torch.device("meta")
    for split, batch in _batches_on(meta, fake_cifar10_dir, resident_on_device=True).items():
        assert {k: v.device.type for k, v in batch.items()} == dict.fromkeys(batch, "meta"), split
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
    for split, batch in _batches_on(meta, fake_cifar10_dir, resident_on_device=False).items():
        assert batch["image"].device.type == "cpu", split


def test_resident_on_device_refuses_loader_workers(fake_cifar10_dir):
    with pytest.raises(ValueError, match="resident_on_device needs num_workers 0"):
        NoisyCIFAR10(data_dir=str(fake_cifar10_dir), resident_on_device=True, num_workers=2)


@pytest.mark.slow
def test_compile_trains_the_same_weights(fake_cifar10_dir):
    """Tiny MLP: inductor's CPU warm-up still takes tens of seconds on 2 cores, hence slow."""
    torch.manual_seed(0)
    ref, _ = fit(fake_cifar10_dir, MLP(hidden=(32,)), steps=1)
    torch.manual_seed(0)
    perf = Performance(compile=True)
    model, _ = fit(fake_cifar10_dir, MLP(hidden=(32,)), [perf], steps=1)
    assert perf.applied_to == ["backbone"]
    assert model.backbone.features._compiled_call_impl is not None  # really compiled (the encoder)
    assert_close(weights(model), weights(ref), atol=1e-5)


def test_find_backbones_names_children_or_explains():
    model = Classifier(MLP(hidden=(8,)))
    assert list(find_backbones(model)) == ["backbone"]
    with pytest.raises(ValueError, match="no sub-module \\['encoder'\\].*backbone"):
        find_backbones(model, ["encoder"])
    with pytest.raises(ValueError, match="no backbones.Backbone child"):
        find_backbones(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_unknown_compile_mode_is_refused():
    with pytest.raises(ValueError, match="unknown compile_mode 'fast'.*reduce-overhead"):
        Performance(compile=True, compile_mode="fast")


def test_to_channels_last_converts_only_float_images_in_nested_batches():
    batch = {"train": {"image": torch.rand(2, 3, 4, 4), "target": torch.tensor([1, 2])},
             "view1": torch.rand(2, 3, 4, 4), "uint8": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)}
    out = to_channels_last(batch)
    assert out is batch
    assert batch["train"]["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["view1"].is_contiguous(memory_format=torch.channels_last)
    assert not batch["uint8"].is_contiguous(memory_format=torch.channels_last)
    assert batch["train"]["target"].tolist() == [1, 2]
