"""Classifier: one backbone trained with CE or GCE on the (noisy) targets."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from datamodules import contracts as c

from . import backbones as bb
from .losses import check_loss, classification_loss
from .method_base import NoisyLabelMethod
from .schedules import ScheduleName, SchedulerInterval
from .tta import TTA


class Classifier(NoisyLabelMethod):
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
            (``backbone.features``) initialises this backbone; the head stays new, since the
            classes of the pretraining (if any) need not be this data's.
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
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        self.backbone = self.keep_backbone_spec(backbone)
        self.init_shared(optimizer, lr_scheduler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        hp = self.hparams
        return classification_loss(logits, targets, hp.loss, hp.gce_q, hp.label_smoothing, reduction)

    def training_step(self, batch: c.Batch, batch_idx: int) -> c.TrainStepOutput:
        logits = self(batch[c.IMAGE])
        per_sample_loss = self.loss(logits, batch[c.TARGET], reduction="none")  # [B]
        loss = per_sample_loss.mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        self.log_train_accuracy(logits, batch)
        # per-sample values for callbacks (callbacks.LabelNoiseDiagnostics): no second forward pass needed
        return {"loss": loss, "per_sample_loss": per_sample_loss.detach(), "logits": logits.detach()}
