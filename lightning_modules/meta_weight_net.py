"""Meta-Weight-Net (Shu et al., NeurIPS 2019) with ``torch.func`` instead of ``higher``.

A small MLP ``V`` maps each sample's training loss to a weight in (0, 1). Every
step (Algorithm 1 of the paper, and the official code ``MW-Net.py``):

1. virtual step: ``theta' = theta - lr * grad_theta sum_i w_i(V) L_i(theta)``, computed
   functionally (``torch.func.functional_call`` with the parameters as plain
   tensors) and keeping the graph, so ``theta'`` is a differentiable function of V;
2. meta step: the loss of the virtual classifier ``theta'`` on a clean meta batch
   is back-propagated through ``theta'`` into V, and V takes one optimiser step;
3. real step: the classifier is trained on ``sum_i w_i L_i`` with the weights of
   the *updated* V (no gradient into V).

Batch norm: the virtual forward and the meta forward run in train mode (batch
statistics, as the official code's ``meta_model`` copy does) on *clones* of the
running buffers, which are then discarded. The real running statistics are
therefore updated exactly once per step, by the real forward, as in plain
training; the official code gets the same effect by deep-copying the model.

Weights are normalised with ``weight_norm``: ``sum`` (w / sum w, the mini-batch
normalisation of the paper), ``batch`` (sum w L / batch size,
the current official ``MW-Net.py``) or ``none`` (sum w L, un-normalised, as in
the contrastive-learning seed repository). The same normalisation is used in
the virtual and the real step so both optimise the same objective.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torch.func import functional_call

from datamodules import contracts as c

from . import backbones as bb
from .losses import check_loss, classification_loss, generalized_cross_entropy
from .method_base import NoisyLabelMethod
from .sample_scores import score_training_set
from .schedules import ScheduleName
from .tta import TTA

WeightNorm = Literal["sum", "batch", "none"]
WEIGHT_NORMS = ("sum", "batch", "none")
META_LOSSES = ("ce", "mae")


class WeightingNet(nn.Module):
    """V: loss -> weight, an MLP 1 -> hidden -> 1 with ReLU and a sigmoid output (the paper's VNet)."""

    def __init__(self, hidden: int = 100):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"weighting net hidden size must be >= 1, got {hidden}")
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(losses.reshape(-1, 1))).squeeze(1)  # [B] -> [B]


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor, norm: WeightNorm = "sum") -> torch.Tensor:
    """Combine per-sample ``losses`` [B] with ``weights`` [B]; see the module docstring for ``norm``."""
    total = (weights * losses).sum()
    if norm == "sum":
        return total / weights.sum().clamp_min(1e-8)
    if norm == "batch":
        return total / len(losses)
    if norm == "none":
        return total
    raise ValueError(f"unknown weight_norm {norm!r}; allowed: {', '.join(WEIGHT_NORMS)}")


def meta_loss_fn(logits: torch.Tensor, targets: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Loss of the virtual classifier on the clean meta batch: ``ce`` or ``mae`` (1 - p_y, = MAE / 2)."""
    if kind == "ce":
        return F.cross_entropy(logits.float(), targets)
    if kind == "mae":
        return generalized_cross_entropy(logits, targets, q=1.0)
    raise ValueError(f"unknown meta_loss {kind!r}; allowed: {', '.join(META_LOSSES)}")


def virtual_meta_loss(
    model: nn.Module,
    weighting_net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_meta: torch.Tensor,
    y_meta: torch.Tensor,
    lr: float | Mapping[str, float],
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weight_norm: WeightNorm = "sum",
    meta_loss: str = "ce",
) -> torch.Tensor:
    """Steps 1-2 of the module docstring: the meta loss as a differentiable function of V.

    ``model`` is left untouched: its parameters enter as detached leaves (no
    gradient reaches the real classifier) and its buffers as clones (batch-norm
    running statistics are not updated). Back-propagating the result fills only
    the gradients of ``weighting_net``. ``lr``: one learning rate, or one per parameter name (the
    optimiser's param groups: ``backbone_lr``, ``norm_lr_scale``), so the virtual step is the real one's.
    """
    params = {k: p.detach().requires_grad_(p.requires_grad) for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    trainable = [k for k, p in params.items() if p.requires_grad]
    losses = per_sample_loss(functional_call(model, (params, buffers), (x,)), y)
    weights = weighting_net(losses.detach())  # V sees the loss value, not its graph (official code)
    inner = weighted_loss(losses, weights, weight_norm)
    grads = torch.autograd.grad(inner, [params[k] for k in trainable], create_graph=True)
    virtual = dict(params)
    for k, g in zip(trainable, grads):
        virtual[k] = params[k] - (lr[k] if isinstance(lr, Mapping) else lr) * g
    return meta_loss_fn(functional_call(model, (virtual, buffers), (x_meta,)), y_meta, meta_loss)


def parameter_lrs(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    """The current learning rate of each of ``model``'s parameters in ``optimizer``, by name."""
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: lr_of[id(p)] for name, p in model.named_parameters() if id(p) in lr_of}


class MetaWeightNet(NoisyLabelMethod):
    """Classifier trained with Meta-Weight-Net sample weights (manual optimisation).

    Needs a datamodule with ``meta_size > 0``: training batches are
    ``{"train": batch, "meta": batch}``, the meta batch carrying clean labels.

    Args:
        backbone: the classifier network (``class_path`` in YAML).
        num_classes: linked from the datamodule by train.py.
        loss: per-sample training loss, ``ce`` or ``gce``.
        gce_q: GCE exponent when ``loss`` is ``gce``.
        meta_loss: loss of the virtual classifier on the meta batch, ``ce`` or ``mae``.
        weight_norm: ``sum`` (paper), ``batch`` (official code) or ``none`` (seed repository).
        hidden: hidden width of the weighting net (paper: 100).
        optimizer: classifier optimiser factory (paper: SGD lr 0.1, momentum 0.9, wd 5e-4).
        meta_optimizer: weighting-net optimiser factory; None: Adam lr 1e-3, wd 1e-4 (official code).
        lr_schedule, warmup_epochs, milestones, gamma, warmup_start_factor, final_lr_factor: classifier
            schedule (see ``schedules``); the virtual step uses each parameter's current learning rate
            in the classifier's optimiser, as the official code uses the classifier's current lr.
        norm_lr_scale, tta, init_from, freeze_backbone, backbone_lr: as in ``Classifier``.
    """

    #: read by ``performance.Performance`` (verified: "torch.compile with aot_autograd does not currently
    #: support double backward", torch 2.14)
    compile_refusal = (
        "its virtual step differentiates through the backbone's gradient (a double backward), which "
        "torch.compile (aot_autograd) does not support"
    )

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        loss: Literal["ce", "gce"] = "ce",
        gce_q: float = 0.7,
        meta_loss: Literal["ce", "mae"] = "ce",
        weight_norm: WeightNorm = "sum",
        hidden: int = 100,
        optimizer: OptimizerCallable = torch.optim.SGD,
        meta_optimizer: OptimizerCallable | None = None,
        lr_schedule: ScheduleName = "constant",
        warmup_epochs: float = 0.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        init_from: str | None = None,
        warmup_start_factor: float = 0.0,
        final_lr_factor: float = 0.0,
        norm_lr_scale: float = 1.0,
        tta: TTA = "none",
        freeze_backbone: bool = False,
        backbone_lr: float | None = None,
    ):
        super().__init__()
        backbone = bb.from_spec(backbone)  # a module, or its spec from a checkpoint's hyper-parameters
        check_loss(loss, gce_q)
        if meta_loss not in META_LOSSES:
            raise ValueError(f"unknown meta_loss {meta_loss!r}; allowed: {', '.join(META_LOSSES)}")
        if weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"unknown weight_norm {weight_norm!r}; allowed: {', '.join(WEIGHT_NORMS)}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "meta_optimizer"])
        self.automatic_optimization = False
        self.backbone = self.keep_backbone_spec(backbone)
        self.init_shared(optimizer)
        self.weighting_net = WeightingNet(hidden)
        self.meta_optimizer_factory = meta_optimizer

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.datamodule_or_none()
        if stage == "fit" and dm is not None and not dm.hparams.get("meta_size", 0):
            raise ValueError("MetaWeightNet needs a clean meta set: set the datamodule's meta_size > 0 (per class)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def per_sample_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, targets, self.hparams.loss, self.hparams.gce_q, reduction="none")

    def training_step(self, batch: c.MetaBatch, batch_idx: int) -> c.TrainStepOutput:
        if c.META not in batch:
            raise ValueError(
                "MetaWeightNet expects {'train': batch, 'meta': batch}; set the datamodule's meta_size > 0"
            )
        train, meta = batch[c.TRAIN], batch[c.META]
        opt, meta_opt = self.optimizers()
        hp = self.hparams

        # 1-2: virtual step, meta loss, update of the weighting net.
        lr = parameter_lrs(opt, self.backbone)  # the current lr of each parameter's group
        meta_loss = virtual_meta_loss(
            self.backbone, self.weighting_net, train[c.IMAGE], train[c.TARGET], meta[c.IMAGE], meta[c.TARGET],
            lr, self.per_sample_loss, hp.weight_norm, hp.meta_loss,
        )
        meta_opt.zero_grad()
        self.manual_backward(meta_loss, inputs=list(self.weighting_net.parameters()))
        meta_opt.step()

        # 3: real step with the updated weights.
        logits = self(train[c.IMAGE])
        losses = self.per_sample_loss(logits, train[c.TARGET])
        with torch.no_grad():
            weights = self.weighting_net(losses.detach())
        loss = weighted_loss(losses, weights, hp.weight_norm)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.step_lr_schedules()

        self._log_train(logits, losses, weights, loss, meta_loss, train)
        return {"loss": loss.detach(), "per_sample_loss": losses.detach(), "logits": logits.detach(),
                "weights": weights.detach()}

    def _log_train(self, logits, losses, weights, loss, meta_loss, train: c.Batch) -> None:
        n = len(losses)
        flipped = train[c.TARGET] != train[c.CLEAN_TARGET]  # logging only
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/meta_loss", meta_loss, on_step=False, on_epoch=True, batch_size=n)
        self.log_train_accuracy(logits, train)
        self.log("train/weight_mean", weights.mean(), on_step=False, on_epoch=True, batch_size=n)
        if flipped.any() and (~flipped).any():
            self.log("train/weight_flipped", weights[flipped].mean(), on_step=False, on_epoch=True, batch_size=n)
            self.log("train/weight_correct", weights[~flipped].mean(), on_step=False, on_epoch=True, batch_size=n)

    def detection_scores(self) -> dict[str, torch.Tensor]:
        """Per training sample: ``score``, the weight the final weighting net gives the sample's loss under
        the final classifier (eval mode, no augmentation), and ``suggested``, the predicted label.
        A collective under DDP (``callbacks.detection``)."""

        def score_batch(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.backbone(x).float()
            return {"score": self.weighting_net(self.per_sample_loss(logits, y).float()), "pred": logits.argmax(1)}

        was_training = self.training
        self.eval()
        scored = score_training_set(self, score_batch)
        self.train(was_training)
        index = self.trainer.datamodule.train_indices
        return {"index": index.cpu(), "score": scored["score"].cpu()[index],
                "suggested": scored["pred"].cpu()[index].long()}

    def optimiser_plan(self) -> list[tuple[list[nn.Parameter], nn.Module]]:
        """The classifier's optimiser; the weighting net has its own (``configure_optimizers``)."""
        return [([p for p in self.backbone.parameters() if p.requires_grad], self.backbone)]

    def configure_optimizers(self):
        (optimizer,), schedules = self.build_optimizers()
        vparams = self.weighting_net.parameters()
        if self.meta_optimizer_factory is None:
            meta_optimizer = torch.optim.Adam(vparams, lr=1e-3, weight_decay=1e-4)
        else:
            meta_optimizer = self.meta_optimizer_factory(vparams)
        return [optimizer, meta_optimizer], schedules
