"""Classifier: one backbone trained with CE or GCE on the (noisy) targets."""

from __future__ import annotations

from typing import Literal, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from . import backbones as bb
from .evaluation import EvaluationMixin
from .losses import check_loss, classification_loss
from .optim_groups import scale_norm_groups, split_norm_groups
from .pretrained import init_encoder, param_groups
from .schedules import (
    ScheduleName,
    SchedulerInterval,
    build_scheduler,
    check_schedule,
    check_scheduler_choice,
    injected_scheduler,
)
from .tta import TTA, check_tta


class Classifier(EvaluationMixin, pl.LightningModule):
    """Supervised training of any backbone on noisy labels.

    Args:
        backbone: the network (``class_path`` in YAML); its output size must equal ``num_classes``.
        num_classes: linked from the datamodule by train.py.
        loss: ``ce`` or ``gce`` (Zhang & Sabuncu 2018, non-truncated).
        gce_q: GCE exponent q (paper default 0.7).
        label_smoothing: for ``ce`` only.
        optimizer: optimiser factory, e.g. ``torch.optim.SGD`` with ``init_args``.
        lr_schedule: ``constant``, ``cosine`` or ``linear`` (to ``final_lr_factor`` at the last step),
            or ``multistep``.
        warmup_epochs: linear warm-up length in epochs (may be fractional).
        milestones, gamma: multistep epochs and factor.
        warmup_start_factor, final_lr_factor: lr multiplier at the start of the warm-up and at the
            end of ``cosine`` / ``linear`` (see ``schedules.lr_factor``).
        norm_lr_scale: learning-rate multiplier of normalisation-layer parameters, their weight
            decay divided by it (airbench: 64; ``optim_groups``).
        tta: test-time augmentation at test and predict (``none``, ``flip``, ``flip_translate``);
            validation stays plain, so model selection costs one forward pass.
        init_from: checkpoint (SimCLR, Classifier, or an exported encoder) whose encoder
            (``backbone.features``) initialises this backbone; the head stays new (issue 4).
        freeze_backbone: train only the head (linear probe): the encoder gets no gradient and
            stays in eval mode, so its batch-norm statistics are not updated either.
        backbone_lr: learning rate of the encoder (own optimiser param group); None = the optimiser's lr.
        lr_scheduler: any ``torch.optim.lr_scheduler`` by ``class_path`` (OneCycleLR, ReduceLROnPlateau,
            CosineAnnealingWarmRestarts, ...) instead of a named ``lr_schedule``.
        lr_scheduler_interval: when ``lr_scheduler`` steps: every ``epoch`` or every optimiser ``step``.
        lr_scheduler_monitor: the metric a ReduceLROnPlateau watches (its ``mode`` must match: min for a loss).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        loss: Literal["ce", "gce"] = "ce",
        gce_q: float = 0.7,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_schedule: ScheduleName = "constant",
        warmup_epochs: float = 0.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        init_from: str | None = None,
        freeze_backbone: bool = False,
        backbone_lr: float | None = None,
        warmup_start_factor: float = 0.0,
        final_lr_factor: float = 0.0,
        norm_lr_scale: float = 1.0,
        tta: TTA = "none",
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: SchedulerInterval = "epoch",
        lr_scheduler_monitor: str = "val/loss",
    ):
        super().__init__()
        backbone = bb.from_spec(backbone)  # a module, or its spec from a checkpoint's hyper-parameters
        check_loss(loss, gce_q)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        check_schedule(lr_schedule, warmup_epochs, milestones, gamma, warmup_start_factor, final_lr_factor)
        check_scheduler_choice(lr_scheduler, lr_schedule, warmup_epochs, lr_scheduler_interval)
        if norm_lr_scale <= 0:
            raise ValueError(f"norm_lr_scale must be > 0, got {norm_lr_scale}")
        check_tta(tta)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        if (backbone_spec := bb.spec(backbone)) is not None:  # load_from_checkpoint(path) rebuilds it
            self.hparams["backbone"] = backbone_spec
        self.backbone = backbone
        init_encoder(backbone, init_from, freeze_backbone, backbone_lr)
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.train_acc_noisy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_acc_clean = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.init_eval_metrics(num_classes)

    def setup(self, stage: str) -> None:
        image_shape = getattr(self.trainer.datamodule, "image_shape", (3, 32, 32)) if self._trainer else (3, 32, 32)
        check_backbone(self.backbone, self.hparams.num_classes, image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        hp = self.hparams
        return classification_loss(logits, targets, hp.loss, hp.gce_q, hp.label_smoothing, reduction)

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        per_sample_loss = self.loss(logits, batch["target"], reduction="none")  # [B]
        loss = per_sample_loss.mean()
        preds = logits.argmax(1)
        self.train_acc_noisy(preds, batch["target"])
        self.train_acc_clean(preds, batch["clean_target"])  # logging only: never used for training
        n = len(preds)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/acc_noisy", self.train_acc_noisy, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/acc_clean", self.train_acc_clean, on_step=False, on_epoch=True, batch_size=n)
        # per-sample values for callbacks (callbacks.LabelNoiseDiagnostics): no second forward pass needed
        return {"loss": loss, "per_sample_loss": per_sample_loss.detach(), "logits": logits.detach()}

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self, self.backbone, hp.get("backbone_lr"))
        norm_lr_scale = hp.get("norm_lr_scale", 1.0)
        if norm_lr_scale != 1.0:
            groups = split_norm_groups(groups, self)
        optimizer = self.optimizer_factory(groups)
        scale_norm_groups(optimizer, norm_lr_scale)
        if self.lr_scheduler_factory is not None:
            return {"optimizer": optimizer, "lr_scheduler": injected_scheduler(
                optimizer, self.lr_scheduler_factory, hp.lr_scheduler_interval, hp.lr_scheduler_monitor)}
        if hp.lr_schedule == "constant" and hp.warmup_epochs == 0:
            return optimizer
        scheduler = build_scheduler(
            optimizer, int(self.trainer.estimated_stepping_batches), int(self.trainer.max_epochs or 1),
            hp.lr_schedule, hp.warmup_epochs, hp.milestones, hp.gamma,
            hp.get("warmup_start_factor", 0.0), hp.get("final_lr_factor", 0.0),
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def train(self, mode: bool = True):
        """Keep a frozen encoder in eval mode (linear probe: no batch-norm statistics updates)."""
        super().train(mode)
        if self.hparams.get("freeze_backbone"):
            self.backbone.features.eval()
        return self


def check_backbone(backbone: nn.Module, num_classes: int, image_shape: tuple[int, int, int]) -> None:
    """Fail before training when the backbone cannot map the data's images to ``num_classes`` logits."""
    try:
        n = bb.output_size(backbone, image_shape)
    except RuntimeError as err:
        raise ValueError(
            f"backbone {type(backbone).__name__} cannot take images of shape {tuple(image_shape)}: {err}"
        ) from err
    if n != num_classes:
        raise ValueError(
            f"backbone {type(backbone).__name__} outputs {n} logits but the data has {num_classes} classes; "
            f"set the backbone's n_outputs to {num_classes}"
        )
