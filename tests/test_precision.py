"""``precision: bf16-mixed`` on CPU trains every LightningModule (autocast on, fp32 master weights).

For each module a few steps run under Lightning's bf16-mixed precision; a
forward hook on the first conv records the dtype its output had (bf16 proves
autocast was on; a run that silently stayed in fp32 fails), the weights must
stay fp32 and change, and the losses must be finite. 16-mixed (fp16 with a
GradScaler) is GPU-only in Lightning; see docs/cluster.md, "Mixed precision".
Kept small (CNN width 0.0625, batches of 16, 2 steps): bf16 convolutions are
emulated on most CPUs and slow.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datamodules import NoisyCIFAR10
from lightning_modules.backbones import CNN


class FirstConvDtype(pl.Callback):
    """Dtype of the first conv's output in training forward passes, and the logged training losses."""

    def __init__(self):
        self.dtypes: set[torch.dtype] = set()
        self.losses: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        conv = next(m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, args, out: self.dtypes.add(out.dtype) if mod.training else None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) and "loss" in outputs else None
        if loss is None:  # modules that return no loss (manual optimisation) log it per step
            loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        if loss is not None:
            self.losses.append(float(loss))


def classifier():
    from lightning_modules import Classifier

    return Classifier(CNN(width=0.0625), optimizer=lambda p: torch.optim.SGD(p, lr=0.05)), {}


def coteaching():
    from lightning_modules.coteaching import CoTeaching

    return CoTeaching(CNN(width=0.0625), forget_rate=0.2, num_gradual=1, epoch_decay_start=1), {}


def simclr():
    from lightning_modules.simclr import SimCLR

    return SimCLR(CNN(width=0.0625), projection_dim=16, lr_schedule="constant"), {"augmentation": "simclr"}


def meta_weight_net():
    from lightning_modules import MetaWeightNet

    return MetaWeightNet(CNN(width=0.0625), optimizer=lambda p: torch.optim.SGD(p, lr=0.05)), {"meta_size": 2}


MODULES = {"classifier": classifier, "coteaching": coteaching, "simclr": simclr, "meta_weight_net": meta_weight_net}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_bf16_mixed_on_cpu_trains_every_module(name, fake_cifar10_dir):
    try:
        model, data = MODULES[name]()
    except ImportError as err:  # a module of another issue that is not in this checkout
        pytest.skip(f"{name}: {err}")
    pl.seed_everything(0)
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=16, val_size=64, noise_type="symmetric",
                      noise_rate=0.2, **data)
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    probe = FirstConvDtype()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_epochs=1, limit_train_batches=2,
        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[probe],
    )
    trainer.fit(model, datamodule=dm)
    assert probe.dtypes == {torch.bfloat16}, f"training convs ran in {probe.dtypes}: autocast was not on"
    after = model.state_dict()
    assert all(after[k].dtype == torch.float32 for k in before)  # master weights stay fp32
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no weight changed: no optimiser step happened"
    if name == "coteaching":  # manual optimisation: both networks must have been stepped
        assert any(k.startswith("net1.") for k in changed) and any(k.startswith("net2.") for k in changed)
    assert probe.losses and all(torch.isfinite(torch.tensor(probe.losses)))


def test_16_mixed_on_cpu_falls_back_to_bf16_with_lightnings_warning():
    """fp16 autocast + GradScaler is a GPU setting; on CPU Lightning 2.6 warns and uses bf16-mixed."""
    from pytorch_lightning.plugins import MixedPrecision

    with pytest.warns(UserWarning, match="fp16 is not supported on CPU. Using `precision='bf16-mixed'` instead"):
        trainer = pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False)
    plugin = trainer.precision_plugin
    assert isinstance(plugin, MixedPrecision) and plugin.precision == "bf16-mixed" and plugin.scaler is None
