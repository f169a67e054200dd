"""What every method shares through ``lightning_modules.method_base``, checked on every method:
``init_from`` fills each network's encoder, ``freeze_backbone`` keeps it fixed while the head
trains, ``backbone_lr`` gives the encoder its own param group, and the shared schedule gives the
same (hand-computed) lr sequence in every method."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datamodules import NoisyCIFAR10
from lightning_modules import Classifier, CoTeaching, DivideMix, MetaWeightNet, SimCLR
from lightning_modules.backbones import CNN
from lightning_modules.method_base import MethodBase, check_backbone
from lightning_modules.method_base import find_backbones

METHODS = ["Classifier", "CoTeaching", "MetaWeightNet", "SimCLR", "DivideMix"]


def sgd(lr: float = 0.1):
    return lambda params: torch.optim.SGD(params, lr=lr)


def make(name: str, **kw) -> MethodBase:
    """A small instance of method ``name``; ``kw`` are shared options (DivideMix's lr warm-up has its own name)."""
    torch.manual_seed(0)
    kw.setdefault("optimizer", sgd())
    backbone = CNN(n_outputs=10, width=0.125)
    if name == "Classifier":
        return Classifier(backbone, **kw)
    if name == "CoTeaching":
        return CoTeaching(backbone, forget_rate=0.2, **kw)
    if name == "MetaWeightNet":
        return MetaWeightNet(backbone, hidden=4, **kw)
    if name == "SimCLR":
        return SimCLR(backbone, projection_dim=8, **{"lr_schedule": "constant", **kw})
    if "warmup_epochs" in kw:
        kw["lr_warmup_epochs"] = kw.pop("warmup_epochs")
    return DivideMix(backbone, warmup_epochs=1, rampup_length=1.0, **kw)


def datamodule(name: str, data_dir) -> NoisyCIFAR10:
    extra = {"MetaWeightNet": {"meta_size": 2}, "SimCLR": {"augmentation": "simclr"},
             "DivideMix": {"augmentation": "crop_flip_twice"}}.get(name, {})
    return NoisyCIFAR10(data_dir=str(data_dir), batch_size=32, val_size=100, noise_type="symmetric",
                        noise_rate=0.4, noise_seed=0, **extra)


def fit(model, name: str, data_dir, epochs: int = 1, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=2, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(model, datamodule=datamodule(name, data_dir))
    return trainer


def heads(model: MethodBase) -> dict[str, torch.Tensor]:
    """What trains while the encoders are frozen: each network's head (SimCLR: the projection head)."""
    if isinstance(model, SimCLR):
        return {f"projection.{k}": v for k, v in model.projection_head.state_dict().items()}
    return {f"{n}.{k}": v for n, net in model.networks().items() for k, v in net.head.state_dict().items()}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """An exported encoder whose tensors differ from any network ``make`` builds."""
    torch.manual_seed(123)
    source = CNN(n_outputs=10, width=0.125)
    for buffer in source.features.buffers():  # batch-norm statistics too, not only the weights
        if buffer.is_floating_point():
            buffer.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    state = {k: v.clone() for k, v in source.features.state_dict().items()}
    torch.save({"state_dict": {f"features.{k}": v for k, v in state.items()}}, path)
    return path, state


def test_networks_are_what_callbacks_find():
    assert list(make("Classifier").networks()) == ["backbone"]
    assert list(make("CoTeaching").networks()) == ["net1", "net2"]
    assert list(make("DivideMix").networks()) == ["net1", "net2"]
    model = make("MetaWeightNet")
    assert list(find_backbones(model)) == ["backbone"]  # not the weighting net
    assert find_backbones(model)["backbone"] is model.backbone
    assert MethodBase.test_prefix == "test" and make("SimCLR").test_prefix == "test"


@pytest.mark.parametrize("name", METHODS)
def test_init_from_loads_the_encoder_into_every_network(name, encoder_file):
    path, saved = encoder_file
    model = make(name, init_from=str(path))
    assert len(model.networks()) == (2 if name in ("CoTeaching", "DivideMix") else 1)
    for net_name, net in model.networks().items():
        loaded = net.features.state_dict()
        assert loaded.keys() == saved.keys()
        for k, v in saved.items():
            assert torch.equal(loaded[k], v), f"{name}.{net_name}.features.{k}"


@pytest.mark.parametrize("name", METHODS)
def test_freeze_backbone_keeps_the_encoders_while_the_heads_train(name, fake_cifar10_dir):
    model = make(name, freeze_backbone=True, optimizer=sgd(0.5))
    encoders = {f"{n}.{k}": v.clone() for n, net in model.networks().items()
                for k, v in net.features.state_dict().items()}
    heads_before = {k: v.clone() for k, v in heads(model).items()}
    fit(model, name, fake_cifar10_dir, epochs=2)  # DivideMix: a warm-up epoch, then one of MixMatch
    for n, net in model.networks().items():  # weights and batch-norm statistics
        for k, v in net.features.state_dict().items():
            assert torch.equal(v, encoders[f"{n}.{k}"]), f"{name}: {n}.features.{k} changed"
    moved = [k for k, v in heads(model).items() if not torch.equal(v, heads_before[k])]
    assert moved, f"{name}: no head parameter moved"
    if len(model.networks()) == 2:
        assert any(k.startswith("net1.") for k in moved) and any(k.startswith("net2.") for k in moved)


@pytest.mark.parametrize("name", METHODS)
def test_backbone_lr_puts_each_encoder_in_its_own_group(name):
    model = make(name, backbone_lr=0.003, optimizer=sgd(0.1))
    optimizers, _ = model.build_optimizers()
    assert len(optimizers) == len(model.networks())  # MW-Net's weighting net is not among them
    for opt, net in zip(optimizers, model.networks().values()):
        encoder = [g for g in opt.param_groups if g["lr"] == 0.003]
        rest = [g for g in opt.param_groups if g["lr"] == 0.1]
        assert len(encoder) == 1 and len(rest) == 1 and len(opt.param_groups) == 2
        assert {id(p) for p in encoder[0]["params"]} == {id(p) for p in net.features.parameters()}
        assert {id(p) for p in net.head.parameters()} <= {id(p) for p in rest[0]["params"]}


class RecordLR(pl.Callback):
    """The lr of the first optimiser's groups before each training step: (smallest, largest)."""

    def __init__(self):
        self.lrs: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.lrs.append((min(g["lr"] for g in groups), max(g["lr"] for g in groups)))


@pytest.mark.parametrize("name", METHODS)
def test_every_method_follows_the_same_schedule(name, fake_cifar10_dir):
    """lr 1, linear, warm-up 1.5 epochs from 0.2, final factor 0.1, norm layers at 4x; 3 epochs of 2
    steps: warm-up over round(1.5 * 2) = 3 steps, 0.2 + 0.8 * k / 3 at step k = 0, 1, 2; then down
    from 1 over the remaining 3 steps, 0.1 + 0.9 * (1 - j / 3) at step 3 + j. (DivideMix's
    cross-entropy warm-up stays 1 epoch: its lr warm-up is another option.)"""
    model = make(name, optimizer=sgd(1.0), lr_schedule="linear", warmup_epochs=1.5, warmup_start_factor=0.2,
                 final_lr_factor=0.1, norm_lr_scale=4.0)
    record = RecordLR()
    fit(model, name, fake_cifar10_dir, epochs=3, callbacks=[record])
    expected = [0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0, 0.7, 0.4]
    assert [lo for lo, _ in record.lrs] == pytest.approx(expected)
    assert [hi for _, hi in record.lrs] == pytest.approx([4 * e for e in expected])


def test_shared_options_fail_early_naming_the_value():
    with pytest.raises(ValueError, match="unknown lr schedule 'cosin'; allowed: constant, cosine, multistep, linear"):
        make("DivideMix", lr_schedule="cosin")
    with pytest.raises(ValueError, match="norm_lr_scale must be > 0, got 0"):
        make("MetaWeightNet", norm_lr_scale=0.0)
    with pytest.raises(ValueError, match="unknown tta 'flop'"):
        make("DivideMix", tta="flop")
    with pytest.raises(ValueError, match="contradict"):
        make("CoTeaching", freeze_backbone=True, backbone_lr=0.01)
    with pytest.raises(ValueError, match="CoTeaching: backbone_lr 0.01 needs an optimizer"):
        make("CoTeaching", optimizer=None, backbone_lr=0.01)
    with pytest.raises(ValueError, match="outputs 7 logits but the data has 10 classes"):
        check_backbone(CNN(n_outputs=7, width=0.125), 10, (3, 32, 32))
    check_backbone(CNN(n_outputs=7, width=0.125), None, (3, 32, 32))  # SimCLR: the images only


def test_mwnet_virtual_step_uses_each_parameters_group_lr():
    """With param groups (backbone_lr, norm_lr_scale) the virtual step takes each parameter's own lr:
    the same lr for all reproduces the one-lr step exactly; the groups' lrs give another meta loss."""
    from lightning_modules.meta_weight_net import WeightingNet, parameter_lrs, virtual_meta_loss

    model = make("MetaWeightNet", backbone_lr=0.01, optimizer=sgd(0.5))
    (opt,), _ = model.build_optimizers()
    lrs = parameter_lrs(opt, model.backbone)
    encoder = {f"features.{k}" for k, _ in model.backbone.features.named_parameters()}
    assert {k for k, v in lrs.items() if v == 0.01} == encoder
    assert {k for k, v in lrs.items() if v == 0.5} == {f"head.{k}" for k, _ in model.backbone.head.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x, xm = torch.randn(8, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    y, ym = torch.randint(0, 10, (8,), generator=g), torch.randint(0, 10, (4,), generator=g)

    def meta(lr):
        torch.manual_seed(1)
        return virtual_meta_loss(model.backbone, WeightingNet(4), x, y, xm, ym, lr, model.per_sample_loss)

    assert torch.equal(meta(0.5), meta({k: 0.5 for k in lrs}))
    mixed = meta(lrs)  # neither of the two lrs taken for every parameter
    assert not torch.allclose(mixed, meta(0.5)) and not torch.allclose(mixed, meta(0.01))
