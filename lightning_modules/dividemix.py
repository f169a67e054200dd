"""DivideMix: two networks; each epoch each one splits the training set into clean-labelled and
unlabelled samples by a Gaussian mixture on its per-sample losses, and the *other* network is
trained on that split with MixMatch (label co-refinement, co-guessing, MixUp).

Li, Socher, Hoi, ICLR 2020; official code https://github.com/LiJunnan1992/DivideMix
(``Train_cifar.py``). The maths lives in ``dividemix_math.py``.

How the reference's loop maps onto one Lightning loop (the departures, and why):

* Warm-up (``epoch < warmup_epochs``): both networks are trained with cross-entropy on the whole
  training set (plus the confidence penalty under asymmetric noise), as in the reference.
* Co-divide: at the start of every later epoch, both networks score every training image in
  eval mode without augmentation (``datamodule.train_eval_dataloader()``; under DDP each process
  scores its share and the losses are summed across processes), the normalised losses go through
  the mixture, and the posteriors of network 1 train network 2 and vice versa. The mixture is
  seeded, so every process (and a resumed run) gets the same split.
* The reference draws labelled batches from the labelled set and unlabelled batches from the rest
  with two loaders, and trains network 1 for a whole epoch, then network 2. Here one loader serves
  the whole training set (two augmented views per image, ``augmentation: crop_flip_twice``) and each
  batch is split by the other network's clean probability: the labelled and unlabelled parts then
  have the sizes the split gives (not 64 + 64), an epoch visits every sample once, and both networks
  take one step per batch (one backward over both graphs, as DDP requires). The guesses of the
  trained network come from one no-grad train-mode forward over both views (the reference runs four
  forwards of 64); the other network guesses in eval mode, as in the reference.
* Evaluation uses the mean of the two networks' logits (the reference sums them: same argmax).
* ``optimizer`` (optional) replaces the reference SGD plan by the shared per-step recipe of every
  method (``method_base``), e.g. the fast recipe of configs/fast/cifar10.yaml.
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from datamodules import contracts as c
from datamodules.augment import TwoViews

from . import backbones as bb
from . import dividemix_math as dmm
from . import sample_scores
from .method_base import NoisyLabelMethod
from .schedules import ScheduleName
from .tta import TTA

CKPT_KEY = "dividemix"


class DivideMix(NoisyLabelMethod):
    """DivideMix with any backbone (the paper's: ``backbones.PreActResNet18``).

    Args:
        backbone: network 1 (``class_path`` in YAML); network 2 is a deep copy re-initialised
            with ``backbones.reinitialise``.
        num_classes: linked from the datamodule by train.py.
        warmup_epochs: epochs of plain cross-entropy before the first division (reference: 10 for
            CIFAR-10, 30 for CIFAR-100).
        p_threshold: tau, the clean probability above which a sample stays labelled (0.5; 0.6 at 90%).
        temperature: T of the sharpening (0.5).
        alpha: MixUp's Beta(alpha, alpha) (4).
        lambda_u: final weight of the unlabelled loss (paper: 0 / 25 / 25 / 50 at 20 / 50 / 80 / 90%
            symmetric CIFAR-10, 0 at 40% asymmetric; 25 / 150 / 150 / 150 on CIFAR-100).
        rampup_length: epochs over which the unlabelled weight ramps from 0 to ``lambda_u`` after
            the warm-up (16).
        prior_weight: weight of the uniform-prior regulariser (1; 0 switches it off).
        confidence_penalty: weight of the negative-entropy penalty added to the warm-up loss
            (reference: 1 under asymmetric noise, 0 otherwise).
        loss_history: the mixture is fitted to the mean of the last this many epochs' normalised
            losses (reference: 5 at 90% noise, else 1).
        lr, momentum, weight_decay: SGD of each network (0.02, 0.9, 5e-4), without ``optimizer``.
        lr_milestones, lr_gamma: the lr is multiplied by ``lr_gamma`` at each milestone epoch
            (reference: 0.1 at epoch 150 of 300); with ``optimizer``, the ``multistep`` schedule's.
        gmm_seed: seed of the mixture's initialisation.
        division: ``gmm`` (the method) or ``oracle``, a diagnostic that is not DivideMix: both networks
            train on the true division (labelled = the given label is the clean one), read from the
            datamodule's clean labels. It bounds what a perfect co-divide would give the MixMatch part
            under the same budget; report it only as an oracle.
        init_from, freeze_backbone, backbone_lr: as in ``Classifier``, for both networks.
        optimizer: ``None`` (default): the reference SGD plan above. An optimiser factory instead: one
            optimiser per network with the per-step schedule below (``backbone_lr`` needs one).
        lr_schedule, lr_warmup_epochs, warmup_start_factor, final_lr_factor, norm_lr_scale: as in
            ``Classifier`` (``lr_warmup_epochs`` is its ``warmup_epochs``: here that name is the
            cross-entropy warm-up); used only with ``optimizer``.
        tta: test-time augmentation at test and predict, of each network.
    """

    option_names = {"warmup_epochs": "lr_warmup_epochs", "milestones": "lr_milestones", "gamma": "lr_gamma"}

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        warmup_epochs: int = 10,
        p_threshold: float = 0.5,
        temperature: float = 0.5,
        alpha: float = 4.0,
        lambda_u: float = 25.0,
        rampup_length: float = 16.0,
        prior_weight: float = 1.0,
        confidence_penalty: float = 0.0,
        loss_history: int = 1,
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: Sequence[int] = (150,),
        lr_gamma: float = 0.1,
        gmm_seed: int = 0,
        division: Literal["gmm", "oracle"] = "gmm",
        init_from: str | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: ScheduleName = "constant",
        lr_warmup_epochs: float = 0.0,
        warmup_start_factor: float = 0.0,
        final_lr_factor: float = 0.0,
        norm_lr_scale: float = 1.0,
        tta: TTA = "none",
        freeze_backbone: bool = False,
        backbone_lr: float | None = None,
    ):
        super().__init__()
        backbone = bb.from_spec(backbone)  # a module, or its spec from a checkpoint's hyper-parameters
        check_arguments(warmup_epochs, p_threshold, temperature, alpha, lambda_u, rampup_length, prior_weight,
                        confidence_penalty, loss_history, lr, momentum, weight_decay, lr_milestones, lr_gamma,
                        division)
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.automatic_optimization = False
        self.net1, self.net2 = self.keep_backbone_spec(backbone), bb.reinitialise(copy.deepcopy(backbone))
        self.init_shared(optimizer)
        self.clean_prob: torch.Tensor | None = None  # [2, N]: each network's clean probability per sample
        self.division_epoch: int | None = None  # the epoch whose start computed ``clean_prob``
        self.loss_history: list[list[torch.Tensor]] = [[], []]  # normalised losses of the last epochs

    @property
    def oracle_division(self) -> bool:
        """The diagnostic ``division: oracle`` (checkpoints from before the option have no ``division``)."""
        return self.hparams.get("division", "gmm") == "oracle"

    def networks(self) -> dict[str, nn.Module]:
        return {"net1": self.net1, "net2": self.net2}

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.datamodule_or_none()
        if stage != "fit":
            return
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs <= self.hparams.warmup_epochs:
            raise ValueError(
                f"trainer.max_epochs {max_epochs} leaves no epoch after warmup_epochs {self.hparams.warmup_epochs}: "
                f"DivideMix would only train with cross-entropy; raise max_epochs or lower warmup_epochs"
            )
        for name in ("train_eval_dataloader", "eval_transform", "train_indices"):
            c.require(dm, name, "DivideMix's co-divide")
        if self.oracle_division:
            c.require(dm, "clean_targets", "DivideMix's division: oracle")
        if c.offers(dm, "train_transform") and not isinstance(dm.train_transform, TwoViews):
            raise ValueError(
                "DivideMix needs two augmented views per training image: set data.init_args.augmentation: "
                "crop_flip_twice (or crop2_flip_twice)"
            )

    def on_train_epoch_start(self) -> None:
        epoch, hp = self.current_epoch, self.hparams
        if self.optimizer_factory is None:  # the reference plan; with an optimizer: per-step schedule
            lr = hp.lr * hp.lr_gamma ** sum(epoch >= m for m in hp.lr_milestones)
            for opt in self.optimizers():
                for group in opt.param_groups:
                    group["lr"] = lr
            self.log("train/lr", lr, on_step=False, on_epoch=True)
        # a run resumed mid-epoch keeps the checkpoint's division (Lightning 2.6 does not even call this
        # hook then; the optimisers' saved lr holds too)
        if epoch >= hp.warmup_epochs and self.division_epoch != epoch:
            self.divide()
        if self.clean_prob is not None:
            self._log_division()

    # ------------------------------------------------------------- co-divide
    @torch.no_grad()
    def per_sample_losses(self) -> torch.Tensor:
        """[2, N] cross-entropy of each network on every training image (eval mode, no augmentation),
        indexed by sample index; entries outside the training set are 0. Summed over processes."""
        return self.score_training_set()[0]

    @torch.no_grad()
    def score_training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample losses [2, N] as in ``per_sample_losses``, argmax of the mean logits [N]).
        A collective under DDP (``sample_scores.score_training_set``)."""

        def score_batch(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = [net(x).float() for net in (self.net1, self.net2)]
            losses = torch.stack([F.cross_entropy(lg, y, reduction="none") for lg in logits])  # [2, B]
            return {"loss": losses, "pred": (logits[0] + logits[1]).argmax(1)}

        modes = self.net1.training, self.net2.training
        self.net1.eval(), self.net2.eval()
        scored = sample_scores.score_training_set(self, score_batch)
        self.train_network(self.net1, modes[0]), self.train_network(self.net2, modes[1])
        return scored["loss"], scored["pred"].long()

    def detection_scores(self) -> dict[str, torch.Tensor]:
        """Per training sample: ``score``, the mean of the two networks' clean probabilities (the
        mixture posterior, fitted to the final networks' losses), and ``suggested``, the label the
        mean network predicts. A collective under DDP (see ``callbacks.detection``)."""
        dm = self.trainer.datamodule
        losses, preds = self.score_training_set()
        index = dm.train_indices.to(self.device)
        probs = [dmm.gmm_clean_probability(dmm.normalise_losses(losses[k, index]), seed=self.hparams.gmm_seed)
                 for k in range(2)]
        score = (probs[0] + probs[1]).float() / 2
        return {"index": index.cpu(), "score": score.cpu(), "suggested": preds[index].cpu()}

    def divide(self) -> None:
        """Fit the mixture to each network's normalised losses: ``clean_prob[k]`` is network k's
        clean probability per sample (network k's division trains the other network). With the
        oracle division both networks get the true split instead."""
        dm = self.trainer.datamodule
        train_index = dm.train_indices.to(self.device)
        prob = torch.zeros(2, len(dm.noisy_targets), dtype=torch.float32, device=self.device)
        if self.oracle_division:
            prob[:, train_index] = (dm.noisy_targets == dm.clean_targets).to(self.device)[train_index].float()
        else:
            losses = self.per_sample_losses()[:, train_index]
            for k in range(2):
                history = self.loss_history[k] + [dmm.normalise_losses(losses[k]).cpu()]
                self.loss_history[k] = history[-self.hparams.loss_history:]
                fitted_on = torch.stack(self.loss_history[k]).mean(0)
                fitted = dmm.gmm_clean_probability(fitted_on, seed=self.hparams.gmm_seed)
                prob[k, train_index] = fitted.float().to(self.device)
        self.clean_prob, self.division_epoch = prob, self.current_epoch

    def _log_division(self) -> None:
        """Size and (against the clean labels, for logging only) quality of each network's division."""
        dm = self.trainer.datamodule
        train_index = dm.train_indices.to(self.device)
        for k in range(2):
            prob = self.clean_prob[k, train_index]
            labelled = prob > self.hparams.p_threshold
            self.log(f"train/labelled_fraction_net{k + 1}", labelled.float().mean(), on_step=False, on_epoch=True)
            if not c.offers(dm, "clean_targets"):  # logging only
                continue
            truly_clean = (dm.noisy_targets == dm.clean_targets).to(self.device)[train_index]
            if labelled.any():
                self.log(f"train/division_precision_net{k + 1}", truly_clean[labelled].float().mean(),
                         on_step=False, on_epoch=True)
            if truly_clean.any() and not truly_clean.all():
                self.log(f"train/division_auroc_net{k + 1}", binary_auroc(prob, truly_clean.long()),
                         on_step=False, on_epoch=True)

    # -------------------------------------------------------------- training
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the two networks' logits."""
        return self.combine([self.net1(x), self.net2(x)])

    def training_step(self, batch: c.Batch, batch_idx: int) -> c.TrainStepOutput:
        if self.current_epoch < self.hparams.warmup_epochs:
            out = self.warmup_losses(batch)
        else:
            ramp = dmm.linear_rampup(self.current_epoch + batch_idx / max(1, self.trainer.num_training_batches),
                                     self.hparams.warmup_epochs, self.hparams.lambda_u, self.hparams.rampup_length)
            # network 1 learns from network 2's division and vice versa (co-divide)
            out1 = self.mixmatch_losses(self.net1, self.net2, batch, self.clean_prob[1], ramp)
            out2 = self.mixmatch_losses(self.net2, self.net1, batch, self.clean_prob[0], ramp)
            out = {"loss1": out1["loss"], "loss2": out2["loss"], "logits": out1["logits"], "parts": (out1, out2)}
            self.log("train/lambda_u", ramp, on_step=False, on_epoch=True, batch_size=len(batch[c.TARGET]))
        opt1, opt2 = self.optimizers()
        opt1.zero_grad()
        opt2.zero_grad()
        self.manual_backward(out["loss1"] + out["loss2"])  # one backward over both graphs (DDP)
        opt1.step()
        opt2.step()
        self.step_lr_schedules()
        self.train_network(self.net1), self.train_network(self.net2)
        return self._log_train(batch, out)

    def warmup_losses(self, batch: c.Batch) -> dict:
        """Cross-entropy of each network on the noisy labels, plus the confidence penalty if asked."""
        x, y = batch[c.IMAGE], batch[c.TARGET]
        self.train_network(self.net1), self.train_network(self.net2)
        out = {}
        for k, net in ((1, self.net1), (2, self.net2)):
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            if self.hparams.confidence_penalty:
                loss = loss + self.hparams.confidence_penalty * dmm.confidence_penalty(logits)
            out[f"loss{k}"] = loss
            if k == 1:
                out["logits"] = logits.detach()
        return out

    def mixmatch_losses(self, net: nn.Module, other: nn.Module, batch: c.Batch, clean_prob: torch.Tensor,
                        ramp: float) -> dict:
        """``net``'s MixMatch loss on ``batch`` split by ``clean_prob`` (the other network's division)."""
        hp = self.hparams
        if c.IMAGE2 not in batch:
            raise ValueError("DivideMix needs two augmented views per image (batch key 'image2'): "
                             "set data.init_args.augmentation: crop_flip_twice (or crop2_flip_twice)")
        x1, x2, y = batch[c.IMAGE], batch[c.IMAGE2], batch[c.TARGET]
        w = clean_prob[batch[c.INDEX]]
        lab = w > hp.p_threshold
        unl = ~lab
        with torch.no_grad():
            self.train_network(net)
            other.eval()  # the other network guesses in eval mode (reference: ``net2.eval()``)
            both = torch.cat([x1, x2])
            own_logits = net(both).float()
            own = own_logits.softmax(1).chunk(2)
            others = other(both).float().softmax(1).chunk(2)
            targets_x = dmm.co_refine([own[0][lab], own[1][lab]], y[lab], w[lab], hp.temperature)
            targets_u = dmm.co_guess([own[0][unl], own[1][unl], others[0][unl], others[1][unl]], hp.temperature)
        inputs = torch.cat([x1[lab], x2[lab], x1[unl], x2[unl]])
        targets = torch.cat([targets_x, targets_x, targets_u, targets_u])
        lam = dmm.mixup_lambda(hp.alpha)
        perm = torch.randperm(len(inputs), device=inputs.device)
        mixed_inputs, mixed_targets = dmm.mixup(inputs, targets, lam, perm)
        logits = net(mixed_inputs)
        n_x = 2 * len(targets_x)
        loss_x, loss_u = dmm.semi_losses(logits[:n_x], mixed_targets[:n_x], logits[n_x:], mixed_targets[n_x:])
        penalty = dmm.uniform_prior_penalty(logits)
        loss = loss_x + ramp * loss_u + hp.prior_weight * penalty
        return {"loss": loss, "loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "penalty": penalty.detach(),
                "labelled": lab, "logits": own_logits[: len(y)].detach()}

    def _log_train(self, batch: c.Batch, out: dict) -> c.TrainStepOutput:
        n = len(batch[c.TARGET])
        loss1 = out["loss1"].detach()
        self.log("train/loss", loss1, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log_train_accuracy(out["logits"], batch)  # network 1, whose loss is train/loss
        self.log("train/loss_net2", out["loss2"].detach(), on_step=False, on_epoch=True, batch_size=n)
        for k, part in enumerate(out.get("parts", ()), start=1):
            for name in ("loss_x", "loss_u", "penalty"):
                self.log(f"train/{name}_net{k}", part[name], on_step=False, on_epoch=True, batch_size=n)
            lab = part["labelled"]
            self.log(f"train/num_labelled_net{k}", lab.float().sum(), on_step=False, on_epoch=True, batch_size=n)
            if lab.any():  # clean labels for this diagnostic only, never for training
                precision = (batch[c.TARGET][lab] == batch[c.CLEAN_TARGET][lab]).float().mean()
                self.log(f"train/label_precision_net{k}", precision, on_step=False, on_epoch=True,
                         batch_size=int(lab.sum()))
        # per-sample values for callbacks (LabelNoiseDiagnostics), from network 1's forward of this batch
        per_sample = F.cross_entropy(out["logits"].float(), batch[c.TARGET], reduction="none")
        return {"loss": loss1, "per_sample_loss": per_sample, "logits": out["logits"]}

    # ------------------------------------------------------------ evaluation
    def combine(self, per_network: list[torch.Tensor]) -> torch.Tensor:
        """The mean of the two networks' logits."""
        return (per_network[0] + per_network[1]) / 2

    def configure_optimizers(self):
        """The reference SGD per network (lr set at each epoch start), or with ``optimizer`` the
        shared per-step recipe, one optimiser per network."""
        if self.optimizer_factory is None:
            hp = self.hparams
            return [torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
                    for net in (self.net1, self.net2)]
        return super().configure_optimizers()

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The current division and the loss history: a run resumed mid-epoch must train the rest of
        the epoch on the same split (recomputing it from mid-epoch weights would give another)."""
        checkpoint[CKPT_KEY] = {
            "clean_prob": None if self.clean_prob is None else self.clean_prob.cpu(),
            "division_epoch": self.division_epoch,
            "loss_history": [[h.cpu() for h in hist] for hist in self.loss_history],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CKPT_KEY)
        if state is None:
            return
        prob = state["clean_prob"]
        self.clean_prob = None if prob is None else prob.to(self.device)
        self.division_epoch = state["division_epoch"]
        self.loss_history = [list(hist) for hist in state["loss_history"]]


def check_arguments(warmup_epochs, p_threshold, temperature, alpha, lambda_u, rampup_length, prior_weight,
                    confidence_penalty, loss_history, lr, momentum, weight_decay, lr_milestones, lr_gamma,
                    division) -> None:
    """Fail at construction with the offending value and what is allowed."""
    if division not in ("gmm", "oracle"):
        raise ValueError(f"division must be gmm or oracle, got {division!r}")
    if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs}")
    dmm.check_probability("p_threshold", p_threshold)
    for name, value in (("temperature", temperature), ("alpha", alpha), ("rampup_length", rampup_length),
                        ("lr", lr)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    for name, value in (("lambda_u", lambda_u), ("prior_weight", prior_weight),
                        ("confidence_penalty", confidence_penalty), ("weight_decay", weight_decay)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if int(loss_history) != loss_history or loss_history < 1:
        raise ValueError(f"loss_history must be an integer >= 1 (epochs), got {loss_history}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if any(int(m) != m or m < 0 for m in lr_milestones):
        raise ValueError(f"lr_milestones must be epochs (integers >= 0), got {list(lr_milestones)}")
    if not 0 < lr_gamma <= 1:
        raise ValueError(f"lr_gamma must be in (0, 1], got {lr_gamma}")
