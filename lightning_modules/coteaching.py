"""CoTeaching: two networks, each trained on the small-loss samples picked by the other.

Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy
Labels", NeurIPS 2018 (official code: https://github.com/bhanML/Co-teaching), with the
optional co-teaching+ rule of Yu et al., ICML 2019 (https://github.com/xingruiyu/coteaching_plus).
The pure pieces (selection, schedules, forget-rate estimate) live in ``coteaching_selection.py``.

Manual optimisation as in Lightning's GAN example: two Adam optimisers, one step each per
batch. The optimiser schedule is a function of the epoch (set at every epoch start), so the
schedule position is the trainer's epoch, which checkpoints already hold.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, Union

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn

from datamodules import contracts as c
from datamodules import noise

from . import backbones as bb
from . import coteaching_selection as sel
from .method_base import NoisyLabelMethod
from .sample_scores import score_training_set
from .schedules import ScheduleName
from .tta import TTA

Mode = Literal["coteaching", "coteaching_plus"]
Selection = Literal["batch", "per_class"]
EvalNetwork = Literal[1, 2, "mean"]
CKPT_KEY = "coteaching"


class CoTeaching(NoisyLabelMethod):
    """Co-teaching (and co-teaching+) with any backbone.

    Args:
        backbone: network 1 (``class_path`` in YAML); network 2 is a deep copy re-initialised
            with ``backbones.reinitialise`` so that the two start independently.
        num_classes: linked from the datamodule by train.py.
        forget_rate: final fraction R of each batch that a network discards. ``None``: the share
            of wrong labels the datamodule's noise implies (``forget_rate_from_data``); ``"auto"``: estimated
            from network 1's per-sample losses after ``auto_warmup_epochs`` epochs of plain
            training (2-component Gaussian mixture, ``coteaching_selection.estimate_forget_rate``).
        num_gradual: epochs over which R(t) ramps up (T_k in the paper).
        exponent: c in R(t) = forget_rate * min((t / num_gradual) ** c, 1).
        mode: ``coteaching`` or ``coteaching_plus`` (select only among samples on which the two
            networks' predictions disagree, from epoch ``init_epoch`` on).
        init_epoch: co-teaching+ only: epochs of plain co-teaching before disagreement starts
            (reference: 20 for CIFAR-10, 5 for CIFAR-100).
        selection: ``batch`` (the paper's: the small-loss fraction of the whole batch) or
            ``per_class`` (that fraction within each given label, so that a class whose labels
            are the least reliable cannot be dropped from training altogether).
        lr: Adam learning rate (reference 0.001).
        epoch_decay_start: (0-based) epoch from which the lr decays linearly and beta1 switches
            (reference 80 for CIFAR-10, 100 for CIFAR-100); must not exceed ``max_epochs``.
        beta1: Adam beta1 before the decay (0.9).
        beta1_decayed: beta1 from ``epoch_decay_start`` on (reference 0.1); ``None`` keeps
            ``beta1`` (cleanlab's variant).
        auto_warmup_epochs: epochs of plain training before ``forget_rate: auto`` is estimated.
        eval_network: which network validates, tests and predicts: 1, 2 or ``mean`` (mean of the
            two softmaxes). ``val/acc`` (the checkpoint monitor) is that network's accuracy.
        init_from, freeze_backbone: as in ``Classifier``, for both networks (both encoders start
            from the pretrained one; the heads stay independent).
        optimizer: ``None`` (default): the reference Adam plan above (``lr``, ``epoch_decay_start``,
            ``beta1``...). An optimiser factory instead (e.g. SGD with ``init_args``): one optimiser per
            network with the per-step schedule below, the same recipe as ``Classifier``'s, so that a
            comparison with CE differs only in the sample selection.
        lr_schedule, warmup_epochs, warmup_start_factor, final_lr_factor, norm_lr_scale, backbone_lr: as
            in ``Classifier``; used only with ``optimizer``.
        label_smoothing: of the per-sample cross-entropy that ranks and trains (0: the paper's).
        tta: test-time augmentation at test and predict (``none``, ``flip``, ``flip_translate``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        forget_rate: Union[float, Literal["auto"], None] = None,
        num_gradual: int = 10,
        exponent: float = 1.0,
        mode: Mode = "coteaching",
        init_epoch: int = 0,
        selection: Selection = "batch",
        lr: float = 1e-3,
        epoch_decay_start: int = 80,
        beta1: float = 0.9,
        beta1_decayed: float | None = 0.1,
        auto_warmup_epochs: int = 5,
        eval_network: EvalNetwork = 1,
        init_from: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: ScheduleName = "constant",
        warmup_epochs: float = 0.0,
        warmup_start_factor: float = 0.0,
        final_lr_factor: float = 0.0,
        norm_lr_scale: float = 1.0,
        label_smoothing: float = 0.0,
        tta: TTA = "none",
        freeze_backbone: bool = False,
        backbone_lr: float | None = None,
    ):
        super().__init__()
        backbone = bb.from_spec(backbone)  # a module, or its spec from a checkpoint's hyper-parameters
        check_arguments(forget_rate, num_gradual, exponent, mode, init_epoch, lr, epoch_decay_start, beta1,
                        beta1_decayed, auto_warmup_epochs, eval_network, selection)
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.automatic_optimization = False
        self.net1, self.net2 = self.build_networks(self.keep_backbone_spec(backbone))
        self.init_shared(optimizer)
        self.forget_rate: float | None = None if forget_rate in (None, "auto") else float(forget_rate)
        self._loss_record: torch.Tensor | None = None  # per-sample losses while estimating the rate
        self._selection: torch.Tensor | None = None  # [2, N]: network-picks offered, network-picks made
        self._label_selection: torch.Tensor | None = None  # [2, C], this epoch: the same, summed per given label

    @staticmethod
    def build_networks(backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Network 1 is ``backbone``; network 2 an independently initialised copy (override to extend)."""
        return backbone, bb.reinitialise(copy.deepcopy(backbone))

    def networks(self) -> dict[str, nn.Module]:
        return {"net1": self.net1, "net2": self.net2}

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.datamodule_or_none()
        if stage == "fit":
            if self.optimizer_factory is None:
                check_max_epochs(self.hparams.epoch_decay_start, self.trainer.max_epochs)
            if self.hparams.forget_rate is None and self.forget_rate is None:
                self.forget_rate = forget_rate_from_data(dm)

    def on_train_epoch_start(self) -> None:
        epoch, hp = self.current_epoch, self.hparams
        self._label_selection = torch.zeros(2, hp.num_classes, device=self.device)
        if hp.forget_rate == "auto" and self.forget_rate is None:
            self._auto_forget_rate_step(epoch)
        if self.optimizer_factory is not None:  # per-step schedule: see configure_optimizers
            return
        lr, beta1 = sel.adam_plan(epoch, self.trainer.max_epochs, hp.epoch_decay_start, hp.lr, hp.beta1,
                                  hp.beta1_decayed)
        for opt in self.optimizers():
            for group in opt.param_groups:
                group["lr"] = lr
                group["betas"] = (beta1, group["betas"][1])
        self.log("train/lr", lr, on_step=False, on_epoch=True)
        self.log("train/beta1", beta1, on_step=False, on_epoch=True)

    def current_forget_rate(self) -> float:
        """R(t) at the current epoch (0 while ``forget_rate: auto`` is still warming up)."""
        if self.forget_rate is None:
            return 0.0
        return sel.forget_rate_at(self.current_epoch, self.forget_rate, self.hparams.num_gradual,
                                  self.hparams.exponent)

    # -------------------------------------------------------------- training
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the evaluated network; for ``mean``, log of the mean softmax."""
        which = self.hparams.eval_network
        if which == 1:
            return self.net1(x)
        if which == 2:
            return self.net2(x)
        return self.combine([self.net1(x), self.net2(x)])

    def combine(self, per_network: list[torch.Tensor]) -> torch.Tensor:
        """The evaluated network's logits given both networks' (log-probabilities for ``mean``)."""
        logits1, logits2 = per_network
        which = self.hparams.eval_network
        if which == "mean":
            return torch.stack([logits1.softmax(1), logits2.softmax(1)]).mean(0).log()
        return logits1 if which == 1 else logits2

    def compute_updates(self, batch: c.Batch, forget_rate: float) -> dict:
        """Both networks' forward pass, the cross selection and the losses each one minimises."""
        x, y = batch[c.IMAGE], batch[c.TARGET]
        logits1, logits2 = self.net1(x), self.net2(x)
        smoothing = self.hparams.get("label_smoothing", 0.0)
        loss1 = F.cross_entropy(logits1.float(), y, reduction="none", label_smoothing=smoothing)  # [B]
        loss2 = F.cross_entropy(logits2.float(), y, reduction="none", label_smoothing=smoothing)  # [B]
        plus = self.hparams.mode == "coteaching_plus" and self.current_epoch >= self.hparams.init_epoch
        candidates = sel.disagreement(logits1, logits2) if plus else None
        per_class = self.hparams.get("selection", "batch") == "per_class"  # older checkpoints: batch
        pick1, pick2 = sel.cross_selection(loss1, loss2, forget_rate, candidates, y if per_class else None)
        update1, update2 = sel.cross_update_losses(loss1, loss2, pick1, pick2)
        return {"logits1": logits1, "logits2": logits2, "loss1": loss1, "loss2": loss2,
                "pick1": pick1, "pick2": pick2, "update1": update1, "update2": update2}

    def training_step(self, batch: c.Batch, batch_idx: int) -> c.TrainStepOutput:
        rate = self.current_forget_rate()
        out = self.compute_updates(batch, rate)
        opt1, opt2 = self.optimizers()
        opt1.zero_grad()
        opt2.zero_grad()
        # One backward over both (disjoint) graphs: DDP wraps the whole module and expects a single
        # backward per step. Under 16-mixed Lightning updates the loss scale after *each* step, so a
        # scale change at opt1's step mis-scales network 2's gradients for that one step (docs/cluster.md).
        self.manual_backward(out["update1"] + out["update2"])
        # An empty selection (co-teaching+) means no update, not a momentum step. The gradients are
        # averaged over all processes, so whether to step is decided over all of them too: a process
        # skipping a step that another one takes would leave the replicas apart for good.
        picked1, picked2 = self.selected_anywhere(out["pick1"], out["pick2"])
        if picked2:
            opt1.step()
        if picked1:
            opt2.step()
        self.step_lr_schedules()
        self._count_selection(batch[c.INDEX], out["pick1"], out["pick2"])
        self._count_label_selection(batch[c.TARGET], out["pick1"], out["pick2"])
        loss1 = out["loss1"].detach()
        if self._loss_record is not None:
            self._loss_record[batch[c.INDEX].to(self._loss_record.device)] = loss1.to(self._loss_record)
        self._log_train(batch, out, rate)
        return {"loss": loss1.mean(), "per_sample_loss": loss1, "logits": out["logits1"].detach()}

    def _count_selection(self, index: torch.Tensor, pick1: torch.Tensor, pick2: torch.Tensor) -> None:
        """Count how often each sample was in a network's small-loss pick (its clean score for detection)."""
        if self._selection is None:
            dm = self.trainer.datamodule
            if not c.offers(dm, "noisy_targets"):  # one slot per sample index
                return  # a datamodule without sample indices: no counts (detection_scores then refuses)
            self._selection = torch.zeros(2, len(dm.noisy_targets), device=self.device)
        add_picks(self._selection, index, pick1, pick2)

    def _count_label_selection(self, y: torch.Tensor, pick1: torch.Tensor, pick2: torch.Tensor) -> None:
        """The same per given label, this epoch (``train/selected_fraction``)."""
        if self._label_selection is not None:  # set at every epoch start
            add_picks(self._label_selection, y, pick1, pick2)

    def on_train_epoch_end(self) -> None:
        """Log, per given label, the fraction of the places offered to its samples this epoch that a
        network's small-loss pick took. A class whose fraction falls to 0 has dropped out of training:
        batch-wide selection does not bring it back (docs/results.md), ``selection: per_class`` cannot
        let it fall. ``train/selected_fraction_min`` is the smallest over the labels seen."""
        counts = self._label_selection
        if counts is None:
            return
        counts = self.trainer.strategy.reduce(counts.clone(), reduce_op="sum")  # each process its share
        seen = counts[0] > 0
        if not seen.any():
            return
        fraction = counts[1] / counts[0].clamp_min(1)
        for label in seen.nonzero().flatten().tolist():
            self.log(f"train/selected_fraction/label_{label}", fraction[label], on_epoch=True)
        self.log("train/selected_fraction_min", fraction[seen].min(), on_epoch=True)

    def detection_scores(self) -> dict[str, torch.Tensor]:
        """Per training sample: ``score``, the fraction of (network, step) picks that selected it over the
        whole run, and ``suggested``, the evaluated network's prediction (eval mode, no augmentation).
        A collective under DDP (``callbacks.detection``)."""
        if self._selection is None:
            raise ValueError("co-teaching has no selection counts yet: detection_scores needs a trained model")
        counts = self.trainer.strategy.reduce(self._selection.clone(), reduce_op="sum")  # each process its share
        was_training = self.training
        self.eval()
        pred = score_training_set(self, lambda x, y: {"pred": self(x).argmax(1)})["pred"]
        self.train(was_training)
        index = self.trainer.datamodule.train_indices.to(counts.device)
        score = counts[1, index] / counts[0, index].clamp_min(1)
        return {"index": index.cpu(), "score": score.cpu(), "suggested": pred[index].long().cpu()}

    def selected_anywhere(self, *picks: torch.Tensor) -> list[bool]:
        """For each selection: is it non-empty on at least one process (this one alone without DDP)?"""
        counts = torch.tensor([p.numel() for p in picks], device=self.device)
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        return [bool(c > 0) for c in counts.tolist()]

    def _log_train(self, batch: c.Batch, out: dict, rate: float) -> None:
        n = len(batch[c.TARGET])
        self.log("train/loss", out["loss1"].detach().mean(), on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log_train_accuracy(out["logits1"], batch)  # network 1, whose loss is train/loss
        self.log("train/forget_rate", rate, on_step=False, on_epoch=True, batch_size=n)
        for k in (1, 2):
            pick = out[f"pick{k}"]
            self.log(f"train/loss_net{k}", out[f"update{k}"].detach(), on_step=False, on_epoch=True, batch_size=n)
            self.log(f"train/num_selected_net{k}", float(pick.numel()), on_step=False, on_epoch=True, batch_size=n)
            if pick.numel():
                # clean labels are used for this diagnostic only, never for training
                clean = (batch[c.TARGET][pick] == batch[c.CLEAN_TARGET][pick]).float().mean()
                self.log(f"train/label_precision_net{k}", clean, on_step=False, on_epoch=True,
                         batch_size=pick.numel())

    def configure_optimizers(self):
        """The reference Adam plan (one Adam per network, lr and beta1 set at each epoch start), or
        with ``optimizer`` the shared per-step recipe, one optimiser per network."""
        if self.optimizer_factory is None:
            hp = self.hparams
            return [torch.optim.Adam(net.parameters(), lr=hp.lr, betas=(hp.beta1, 0.999))
                    for net in (self.net1, self.net2)]
        return super().configure_optimizers()

    # ------------------------------------------------------- forget_rate: auto
    def _auto_forget_rate_step(self, epoch: int) -> None:
        """Record losses during the last warm-up epoch; estimate R at the start of the next one."""
        warmup = self.hparams.auto_warmup_epochs
        if epoch >= warmup and self._loss_record is not None:
            record = self.merged_loss_record()
            seen = torch.isfinite(record)
            self.forget_rate = sel.estimate_forget_rate(record[seen], seed=0)
            self._loss_record = None
            self.print(f"co-teaching: estimated forget_rate {self.forget_rate:.4f}")
        elif epoch >= warmup - 1 and self._loss_record is None:
            n = len(c.require(self.trainer.datamodule, "noisy_targets", "co-teaching's forget_rate: auto"))
            self._loss_record = torch.full((n,), float("nan"), device=self.device)
        if self.forget_rate is not None:
            self.log("train/forget_rate_estimate", self.forget_rate, on_step=False, on_epoch=True)
            dm = self.trainer.datamodule
            if c.offers(dm, "actual_noise_rate"):  # logging only
                self.log("train/actual_noise_rate", float(dm.actual_noise_rate), on_step=False, on_epoch=True)

    def merged_loss_record(self) -> torch.Tensor:
        """The loss record of every process in one: under DDP each one records only the samples of
        its share, and an estimate from one share would differ from process to process.

        A collective: every process must call it (epoch starts and checkpoint saves are on all).
        """
        record = self._loss_record
        if self.trainer.world_size == 1:
            return record
        gathered = self.all_gather(record)  # [W, N], NaN where a process did not see the sample
        owner = torch.isfinite(gathered).float().argmax(0)  # first process that did (0 when none)
        return gathered[owner, torch.arange(gathered.shape[1], device=gathered.device)]

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Add what the weights, optimisers and loop state do not hold: the (estimated) forget
        rate, the loss record of an unfinished estimate and the selection counts, each merged over
        processes (only rank 0's checkpoint is written). ``Trainer.save_checkpoint`` runs on every
        process, so the merges may gather. (RNG states: ``callbacks/exact_resume.py``.)"""
        record = None if self._loss_record is None else self.merged_loss_record()
        selection = self._selection
        if selection is not None and self.trainer.world_size > 1:  # each process counted its own share
            selection = self.trainer.strategy.reduce(selection.clone(), reduce_op="sum")
        checkpoint[CKPT_KEY] = {
            "forget_rate": self.forget_rate,
            "loss_record": None if record is None else record.cpu(),
            "selection": None if selection is None else selection.cpu(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CKPT_KEY)
        if state is None:
            return
        self.forget_rate = state["forget_rate"]
        record = state.get("loss_record")
        self._loss_record = None if record is None else record.to(self.device)
        selection = state.get("selection")
        if selection is not None and self.global_rank > 0:
            selection = torch.zeros_like(selection)  # the merged counts live on rank 0: summed once
        self._selection = None if selection is None else selection.to(self.device)


def add_picks(counts: torch.Tensor, key: torch.Tensor, pick1: torch.Tensor, pick2: torch.Tensor) -> None:
    """``counts[0][k] += 2`` for each sample of key k in the batch (two networks each offered it a place in
    their pick), ``counts[1][k] += 1`` for each network's pick of it. ``key``: a sample's index or label."""
    counts[0].index_add_(0, key, torch.full_like(key, 2, dtype=counts.dtype))
    for pick in (pick1, pick2):
        counts[1].index_add_(0, key[pick], torch.ones_like(pick, dtype=counts.dtype))


def check_arguments(
    forget_rate, num_gradual, exponent, mode, init_epoch, lr, epoch_decay_start, beta1, beta1_decayed,
    auto_warmup_epochs, eval_network, selection="batch",
) -> None:
    """Fail at construction with the offending value and what is allowed."""
    if forget_rate not in (None, "auto"):
        if isinstance(forget_rate, str) or not isinstance(forget_rate, (int, float)) or math.isnan(forget_rate):
            raise ValueError(f"forget_rate must be a number in [0, 1), 'auto' or null, got {forget_rate!r}")
        sel.check_forget_rate(forget_rate)
    if int(num_gradual) != num_gradual or num_gradual < 1:
        raise ValueError(f"num_gradual must be an integer >= 1 (epochs), got {num_gradual}")
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    if mode not in ("coteaching", "coteaching_plus"):
        raise ValueError(f"unknown mode {mode!r}; allowed: coteaching, coteaching_plus")
    if selection not in ("batch", "per_class"):
        raise ValueError(f"unknown selection {selection!r}; allowed: batch, per_class")
    if init_epoch < 0:
        raise ValueError(f"init_epoch must be >= 0, got {init_epoch}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if epoch_decay_start < 0:
        raise ValueError(f"epoch_decay_start must be >= 0, got {epoch_decay_start}")
    for name, b in (("beta1", beta1), ("beta1_decayed", beta1_decayed)):
        if b is not None and not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    if forget_rate == "auto" and auto_warmup_epochs < 1:
        raise ValueError(f"auto_warmup_epochs must be >= 1 with forget_rate: auto, got {auto_warmup_epochs}")
    if eval_network not in (1, 2, "mean"):
        raise ValueError(f"eval_network must be 1, 2 or 'mean', got {eval_network!r}")


def check_max_epochs(epoch_decay_start: int, max_epochs: int | None) -> None:
    """The linear decay needs a finite epoch budget that ``epoch_decay_start`` does not pass."""
    if max_epochs is None or max_epochs < 1:
        raise ValueError(f"co-teaching's lr schedule needs a finite trainer.max_epochs, got {max_epochs}")
    if epoch_decay_start > max_epochs:
        raise ValueError(
            f"epoch_decay_start {epoch_decay_start} is past trainer.max_epochs {max_epochs}; "
            f"set model.init_args.epoch_decay_start to at most {max_epochs} (reference: 0.4 * max_epochs)"
        )


def forget_rate_from_data(dm) -> float:
    """The share of wrong labels the datamodule's noise implies: the realised share for human labels;
    for synthetic noise, the expected share under its transition matrix (``noise.expected_noise_rate``:
    ``noise_rate`` itself for symmetric and pairflip noise, half of it for CIFAR-10's asymmetric noise,
    where only five classes flip), else ``noise_rate``. Forgetting ``noise_rate`` of every batch under
    asymmetric noise would discard twice the wrong labels there are, whole classes first."""
    hp = dm.hparams if dm is not None else {}
    rate = hp.get("noise_rate")
    if hp.get("noise_type") == "human":
        rate = float(c.require(dm, "actual_noise_rate", "forget_rate: null with human labels"))
    elif rate is not None and c.offers(dm, "transition_matrix") and c.offers(dm, "clean_targets"):
        rate = noise.expected_noise_rate(dm.transition_matrix, dm.clean_targets)
    if rate is None:
        raise ValueError("forget_rate is null but the datamodule has no noise_rate; set model.init_args.forget_rate")
    sel.check_forget_rate(rate)
    return float(rate)
