"""What every training method shares, written once.

``MethodBase`` (every method, SimCLR included): the networks a method trains (``networks()``), the
checks of those networks against the datamodule's images, the pretrained-encoder options
(``init_from``, ``freeze_backbone``, ``backbone_lr``, applied to every network), and the optimiser and
learning-rate schedule built from the injectable ``optimizer`` (one optimiser per entry of
``optimiser_plan()``). ``NoisyLabelMethod`` adds what needs labels: the class count check, training
accuracy on the noisy and on the clean labels, and evaluation (validation / test / predict, TTA).

Because these options mean the same in every method, a recipe carries over unchanged: the optimiser
and schedule of configs/fast/cifar10.yaml work for co-teaching, DivideMix and Meta-Weight-Net too.

Shared options are read from ``self.hparams`` (each method saves its own first), with the defaults of
``SHARED_DEFAULTS`` for a method that does not take an option.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from datamodules import contracts as c

from . import backbones as bb
from .optim_groups import scale_norm_groups, split_norm_groups
from .pretrained import init_encoder, param_groups
from .schedules import build_scheduler, check_schedule, check_scheduler_choice, injected_scheduler
from .tta import check_tta, tta_logits

SHARED_DEFAULTS: dict[str, Any] = {
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "milestones": (),
    "gamma": 0.1,
    "warmup_start_factor": 0.0,
    "final_lr_factor": 0.0,
    "norm_lr_scale": 1.0,
    "tta": "none",
    "label_smoothing": 0.0,
    "init_from": None,
    "freeze_backbone": False,
    "backbone_lr": None,
    "lr_scheduler_interval": "epoch",
    "lr_scheduler_monitor": "val/loss",
}
DEFAULT_IMAGE_SHAPE = (3, 32, 32)  # a module used outside a Trainer (no datamodule to ask)


def check_backbone(backbone: nn.Module, num_classes: int | None, image_shape: tuple[int, int, int]) -> None:
    """Fail before training when the backbone cannot take the data's images or does not give
    ``num_classes`` logits (``None``: the images only, for a method that does not classify)."""
    try:
        n = bb.output_size(backbone, image_shape)
    except RuntimeError as err:
        raise ValueError(
            f"backbone {type(backbone).__name__} cannot take images of shape {tuple(image_shape)}: {err}"
        ) from err
    if num_classes is not None and n != num_classes:
        raise ValueError(
            f"backbone {type(backbone).__name__} outputs {n} logits but the data has {num_classes} classes; "
            f"set the backbone's n_outputs to {num_classes}"
        )


def split_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        }
    )


class MethodBase(pl.LightningModule):
    """Networks, encoder options, optimiser and schedule of any method (see the module docstring).

    A subclass's ``__init__``: ``save_hyperparameters``, build its networks, then ``init_shared``.
    """

    #: metric prefix at test time; train.py sets ``test_best`` to test the best checkpoint in the same run
    test_prefix: str = "test"
    #: a shared option that a method takes under another name (its own option has the shared name)
    option_names: dict[str, str] = {}

    def networks(self) -> dict[str, nn.Module]:
        """The networks the method trains, by attribute name: what the encoder options apply to and
        what callbacks (speed knobs, weight averaging, whitening) treat."""
        return {"backbone": self.backbone}

    def option(self, name: str) -> Any:
        """A shared option's value (``SHARED_DEFAULTS`` for a method that does not take it)."""
        return self.hparams.get(self.option_names.get(name, name), SHARED_DEFAULTS[name])

    def keep_backbone_spec(self, backbone: nn.Module) -> nn.Module:
        """Record the backbone's ``{class_path, init_args}`` so that ``load_from_checkpoint(path)`` rebuilds it."""
        if (backbone_spec := bb.spec(backbone)) is not None:
            self.hparams["backbone"] = backbone_spec
        return backbone

    def init_shared(self, optimizer=None, lr_scheduler=None) -> None:
        """Check the shared options (before any loading), keep the optimiser and scheduler factories,
        then load ``init_from`` into every network's encoder and freeze it if asked."""
        check_schedule(*self.schedule_options())
        check_scheduler_choice(lr_scheduler, self.option("lr_schedule"), self.option("warmup_epochs"),
                               self.option("lr_scheduler_interval"))
        if self.option("norm_lr_scale") <= 0:
            raise ValueError(f"norm_lr_scale must be > 0, got {self.option('norm_lr_scale')}")
        check_tta(self.option("tta"))
        if not 0.0 <= self.option("label_smoothing") < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.option('label_smoothing')}")
        if optimizer is None and self.option("backbone_lr") is not None:
            raise ValueError(f"{type(self).__name__}: backbone_lr {self.option('backbone_lr')} needs an optimizer; "
                             f"without one the method's reference optimiser sets one lr for the whole network")
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        for net in self.networks().values():
            init_encoder(net, self.option("init_from"), self.option("freeze_backbone"), self.option("backbone_lr"))
            # now, not only in ``train()``: Lightning does not call ``train()`` when fitting starts
            self.train_network(net, self.training)

    # ------------------------------------------------------------- set-up
    def datamodule_or_none(self):
        return self.trainer.datamodule if self._trainer else None

    def classes_to_check(self) -> int | None:
        """The logit count every network must give (None: not checked)."""
        return None

    def setup(self, stage: str) -> None:
        dm = self.datamodule_or_none()
        shape = DEFAULT_IMAGE_SHAPE if dm is None else c.require(dm, "image_shape", type(self).__name__)
        for net in self.networks().values():
            check_backbone(net, self.classes_to_check(), tuple(shape))

    def train(self, mode: bool = True):
        super().train(mode)
        for net in self.networks().values():
            self.train_network(net, mode)
        return self

    def train_network(self, net: nn.Module, mode: bool = True) -> None:
        """``net.train(mode)``, but a frozen encoder stays in eval mode (linear probe: no batch-norm
        statistics updates); methods that switch one network's mode themselves call this."""
        net.train(mode)
        if mode and self.option("freeze_backbone"):
            net.features.eval()

    # ------------------------------------------------- optimiser and schedule
    def optimiser_plan(self) -> list[tuple[list[nn.Parameter], nn.Module]]:
        """(parameters, network) for each optimiser built from ``optimizer``; the network's encoder
        is the ``backbone_lr`` group. Default: one network: one optimiser over every trainable
        parameter of the module; several: one optimiser per network (each steps on its own loss)."""
        nets = list(self.networks().values())
        if len(nets) == 1:
            return [([p for p in self.parameters() if p.requires_grad], nets[0])]
        return [([p for p in net.parameters() if p.requires_grad], net) for net in nets]

    def build_optimizer(self, params: list[nn.Parameter], network: nn.Module) -> torch.optim.Optimizer:
        """``optimizer`` over ``params``: the encoder at ``backbone_lr``, norm layers at ``norm_lr_scale`` x lr."""
        backbone_lr, scale = self.option("backbone_lr"), self.option("norm_lr_scale")
        groups = param_groups(params, network, backbone_lr)
        if scale != 1.0:
            groups = split_norm_groups(groups, self)
        optimizer = self.optimizer_factory(groups)
        scale_norm_groups(optimizer, scale)
        return optimizer

    def build_schedule(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """Lightning's scheduler config: the injected ``lr_scheduler``, else the named ``lr_schedule``
        stepped every optimiser step; None for a constant lr without warm-up."""
        if self.lr_scheduler_factory is not None:
            return injected_scheduler(optimizer, self.lr_scheduler_factory, self.option("lr_scheduler_interval"),
                                      self.option("lr_scheduler_monitor"))
        schedule, warmup = self.option("lr_schedule"), self.option("warmup_epochs")
        if schedule == "constant" and warmup == 0:
            return None
        return build_scheduler(optimizer, int(self.trainer.estimated_stepping_batches),
                               int(self.trainer.max_epochs or 1), *self.schedule_options())

    def schedule_options(self) -> tuple:
        """(lr_schedule, warmup_epochs, milestones, gamma, warmup_start_factor, final_lr_factor)."""
        names = ("lr_schedule", "warmup_epochs", "milestones", "gamma", "warmup_start_factor", "final_lr_factor")
        return tuple(self.option(name) for name in names)

    def build_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict]]:
        """The optimisers of ``optimiser_plan()`` and their schedules (Lightning's scheduler configs)."""
        optimizers = [self.build_optimizer(params, net) for params, net in self.optimiser_plan()]
        return optimizers, [s for s in map(self.build_schedule, optimizers) if s is not None]

    def configure_optimizers(self):
        optimizers, schedules = self.build_optimizers()
        if len(optimizers) > 1:
            return optimizers, schedules
        return {"optimizer": optimizers[0], "lr_scheduler": schedules[0]} if schedules else optimizers[0]

    def step_lr_schedules(self) -> None:
        """Manual optimisation: Lightning steps no scheduler, so a method calls this after its optimiser steps."""
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()


class NoisyLabelMethod(MethodBase):
    """A method that classifies: class count check, training accuracy, evaluation with TTA.

    ``forward`` gives the evaluated logits; a two-network method also logs each network's accuracy
    (``{prefix}/acc_net1``, ``acc_net2``) by overriding ``eval_logits_per_network``.
    """

    def init_shared(self, optimizer=None, lr_scheduler=None) -> None:
        super().init_shared(optimizer, lr_scheduler)
        num_classes = self.hparams.num_classes
        self.train_acc_noisy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_acc_clean = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_metrics = split_metrics(num_classes)
        self.test_metrics = split_metrics(num_classes)
        if len(self.networks()) > 1:  # each network's accuracy too
            self.val_acc_nets, self.test_acc_nets = (
                nn.ModuleList([MulticlassAccuracy(num_classes, average="micro") for _ in self.networks()])
                for _split in ("val", "test"))

    def classes_to_check(self) -> int | None:
        return self.hparams.num_classes

    # ---------------------------------------------------------- training
    def log_train_accuracy(self, logits: torch.Tensor, batch: c.Batch) -> None:
        """``train/acc_noisy`` (given labels) and ``train/acc_clean`` (true labels: logging only,
        never used for training) of the reported network's logits."""
        preds, n = logits.detach().argmax(1), len(logits)
        self.train_acc_noisy(preds, batch[c.TARGET])
        self.train_acc_clean(preds, batch[c.CLEAN_TARGET])
        self.log("train/acc_noisy", self.train_acc_noisy, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/acc_clean", self.train_acc_clean, on_step=False, on_epoch=True, batch_size=n)

    # -------------------------------------------------------- evaluation
    def eval_logits(self, split: str, images: torch.Tensor, net=None) -> torch.Tensor:
        """``net(images)`` (default: ``self``), averaged over the TTA ``tta`` outside validation
        (validation stays plain: model selection costs one forward pass)."""
        tta = self.option("tta") if split != "val" else "none"
        return tta_logits(self if net is None else net, images, tta)

    def combine(self, per_network: list[torch.Tensor]) -> torch.Tensor:
        """The evaluated logits from each network's (two-network methods)."""
        raise NotImplementedError

    def metric_prefix(self, split: str) -> str:
        """``val``, or the test prefix train.py set (``test`` / ``test_best``) for test and predict."""
        return "val" if split == "val" else self.test_prefix

    def log_eval(self, split: str, logits: torch.Tensor, batch: c.Batch) -> None:
        target = batch[c.TARGET]
        loss = nn.functional.cross_entropy(logits.float(), target)
        prefix, metrics = self.metric_prefix(split), self.val_metrics if split == "val" else self.test_metrics
        metrics.update(logits, target)
        self.log(f"{prefix}/loss", loss, sync_dist=True, batch_size=len(target))
        self.log_dict({f"{prefix}/{k}": m for k, m in metrics.items()}, prog_bar=split == "val")

    def eval_step(self, split: str, batch: c.Batch) -> c.EvalStepOutput:
        """Log the split's metrics (two networks: each one's accuracy too, one forward per network);
        return the logits for callbacks (confusion matrix, mistakes): no second forward pass."""
        nets = self.networks()
        if len(nets) == 1:
            logits = self.eval_logits(split, batch[c.IMAGE])
            self.log_eval(split, logits, batch)
            return {"logits": logits}
        per_network = [self.eval_logits(split, batch[c.IMAGE], net) for net in nets.values()]
        logits = self.combine(per_network)
        self.log_eval(split, logits, batch)
        accuracies = self.val_acc_nets if split == "val" else self.test_acc_nets
        for k, (metric, lg) in enumerate(zip(accuracies, per_network), start=1):
            metric.update(lg, batch[c.TARGET])
            self.log(f"{self.metric_prefix(split)}/acc_net{k}", metric)
        return {"logits": logits}

    def validation_step(self, batch: c.Batch, batch_idx: int) -> c.EvalStepOutput:
        return self.eval_step("val", batch)

    def test_step(self, batch: c.Batch, batch_idx: int) -> c.EvalStepOutput:
        return self.eval_step("test", batch)

    def predict_step(self, batch: c.Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self.eval_logits("predict", batch[c.IMAGE]).softmax(1)
        return {c.INDEX: batch[c.INDEX], "probs": probs, "pred": probs.argmax(1)}


def find_backbones(pl_module: nn.Module, names: list[str] | None = None) -> dict[str, nn.Module]:
    """The modules the knobs apply to: ``names`` (attributes of ``pl_module``), else a method's
    ``networks()``, else every child ``Backbone``."""
    if names:
        missing = [n for n in names if not isinstance(getattr(pl_module, n, None), nn.Module)]
        if missing:
            children = [n for n, _ in pl_module.named_children()]
            raise ValueError(f"{type(pl_module).__name__} has no sub-module {missing}; its children: {children}")
        return {n: getattr(pl_module, n) for n in names}
    if isinstance(pl_module, MethodBase):
        return pl_module.networks()
    found = {n: m for n, m in pl_module.named_children() if isinstance(m, bb.Backbone)}
    if not found:
        children = [n for n, _ in pl_module.named_children()]
        raise ValueError(
            f"{type(pl_module).__name__} has no backbones.Backbone child; name the modules to speed up "
            f"with Performance(modules=[...]) among {children}"
        )
    return found
