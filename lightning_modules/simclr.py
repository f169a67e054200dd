"""SimCLR (Chen et al. 2020) self-supervised pretraining of a backbone's encoder, built on lightly.

The encoder is ``backbone.features`` of any ``backbones.Backbone`` (CIFAR-stem
ResNet-18 by default); the backbone's linear ``head`` is kept but frozen and never used,
so a SimCLR checkpoint has the same ``backbone.features.*`` keys as a
``Classifier`` one and ``pretrained.load_backbone_weights`` reads either.

Batches come from a datamodule with ``augmentation: simclr`` (two batched views
``view1``/``view2``). Labels are never used for training; the kNN monitor
(``callbacks.knn.KNNMonitor``) reads them for logging only.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from datamodules import contracts as c

from . import backbones as bb
from .method_base import MethodBase
from .schedules import ScheduleName, SchedulerInterval


class SimCLR(MethodBase):
    """Two views -> encoder -> projection head -> NT-Xent.

    Args:
        backbone: a ``Backbone`` (``features`` + ``feature_dim``); default CIFAR-stem ResNet-18.
        num_classes: not used for training (train.py links the data's class count into every model).
        projection_hidden_dim: hidden width of the projection MLP (default: the encoder's feature_dim,
            as in lightly's CIFAR-10 benchmark, ``SimCLRProjectionHead(512, 512, 128)``).
        projection_dim: output size of the projection head (128 in the paper and in lightly).
        temperature: NT-Xent temperature (lightly's default 0.5; the paper's CIFAR runs use 0.5).
        gather_distributed: gather the projections of every process before the loss, so each
            sample sees 2 * global_batch - 2 negatives under DDP (as with one big batch).
        optimizer: optimiser factory, e.g. ``torch.optim.SGD`` or ``lightly.utils.lars.LARS``.
        lr_schedule, warmup_epochs: linear warm-up then ``cosine`` decay to 0 (per step).
        lr_scheduler, lr_scheduler_interval, lr_scheduler_monitor: any ``torch.optim.lr_scheduler`` by
            ``class_path`` instead of a named schedule (then set ``lr_schedule: constant``), as in ``Classifier``.
        warmup_start_factor, final_lr_factor, norm_lr_scale: as in ``Classifier``.
        init_from, backbone_lr, freeze_backbone: as in ``Classifier`` (continue from a pretrained
            encoder; train it slower than the projection head; or train the projection head alone).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        num_classes: int = 10,
        projection_hidden_dim: int | None = None,
        projection_dim: int = 128,
        temperature: float = 0.5,
        gather_distributed: bool = True,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_schedule: ScheduleName = "cosine",
        warmup_epochs: float = 0.0,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: SchedulerInterval = "epoch",
        lr_scheduler_monitor: str = "train/loss",
        warmup_start_factor: float = 0.0,
        final_lr_factor: float = 0.0,
        norm_lr_scale: float = 1.0,
        init_from: str | None = None,
        freeze_backbone: bool = False,
        backbone_lr: float | None = None,
    ):
        super().__init__()
        backbone = bb.from_spec(backbone) if backbone is not None else bb.ResNet(18, n_outputs=num_classes)
        for attr in ("features", "feature_dim"):
            if not hasattr(backbone, attr):
                raise ValueError(
                    f"SimCLR needs a backbones.Backbone with `features` and `feature_dim`; "
                    f"{type(backbone).__name__} has no `{attr}`"
                )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if projection_dim < 1 or (projection_hidden_dim is not None and projection_hidden_dim < 1):
            raise ValueError(
                f"projection sizes must be >= 1, got hidden {projection_hidden_dim}, output {projection_dim}"
            )
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        self.backbone = self.keep_backbone_spec(backbone)
        # the classification head is kept (same checkpoint keys as a Classifier) but never used:
        # frozen, so DDP does not wait for its gradients and the optimiser leaves it alone
        if hasattr(backbone, "head"):
            backbone.head.requires_grad_(False)
        dim = int(backbone.feature_dim)
        self.projection_head = SimCLRProjectionHead(dim, projection_hidden_dim or dim, projection_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)
        self.init_shared(optimizer, lr_scheduler)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output h (what fine-tuning and the kNN monitor use)."""
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projection z = g(h) (what the contrastive loss sees)."""
        return self.projection_head(self.forward_features(x))

    def training_step(self, batch: c.ViewsBatch, batch_idx: int) -> torch.Tensor:
        if c.VIEW1 not in batch or c.VIEW2 not in batch:
            raise KeyError(
                "SimCLR needs two augmented views in the batch (keys view1, view2): "
                "set the datamodule's augmentation to 'simclr'"
            )
        n = len(batch[c.VIEW1])
        # one encoder pass over both views (BN statistics over 2N images, as in the paper)
        z = self(torch.cat([batch[c.VIEW1], batch[c.VIEW2]]))
        loss = self.criterion(z[:n], z[n:])
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def optimiser_plan(self) -> list[tuple[list[nn.Parameter], nn.Module]]:
        """Every parameter, the frozen head's too, so that optimiser states saved before the shared base
        keep their parameter positions (an optimiser skips a parameter that gets no gradient)."""
        return [(list(self.parameters()), self.backbone)]
