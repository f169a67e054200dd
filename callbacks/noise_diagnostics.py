"""Label-noise diagnostics from the per-sample training losses.

Synthetic noise has ground truth (``target != clean_target`` marks a flipped
label), so one can measure what a method does with the noise:

* ``noise/loss_auroc``: AUROC of the per-sample training loss for telling
  flipped from clean samples (0.5: the loss carries no information; near 1:
  small-loss selection as in co-teaching works). Skipped when the batch has no
  ``clean_target`` or the epoch saw only one kind of sample.
* ``noise/memorised`` and ``noise/flipped_clean_acc``: the memorisation
  curve, i.e. the fraction of flipped samples predicted as their noisy label
  and as their clean label (Arpit et al. 2017: clean first, then noise).
* ``noise/loss_clean``, ``noise/loss_flipped``: mean loss of each group, and
  histograms ``noise/loss_hist_clean`` / ``noise/loss_hist_flipped`` (``_all``
  without ground truth).
* At the end, ``suspected_mislabelled.csv``: samples whose last prediction
  disagrees with the given label, most confident first (index, given label,
  predicted label, confidence, loss, and the clean label when known). This
  needs no ground truth, so it works on a user's own data too.
  ``noise_diagnostics.csv`` holds the per-epoch curve and
  ``per_sample_loss.npz`` the last value of every tracked array.

Cost: no extra forward pass. The training step must return
``{"loss", "per_sample_loss", "logits"}`` (``Classifier`` and ``CoTeaching`` do);
values are written into device tensors indexed by ``batch["index"]`` (no
host sync per batch). The numbers therefore describe the *training pass*:
augmented images, train-mode network, the model as it was at each batch.
"""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torchmetrics.functional.classification import binary_auroc

from datamodules.contracts import training_part

from .plotting import output_dir, tensorboard_writer


def loss_auroc(loss: torch.Tensor, flipped: torch.Tensor) -> float | None:
    """AUROC of ``loss`` as a score for ``flipped`` (bool); None when one group is empty."""
    flipped = flipped.bool()
    if flipped.all() or not flipped.any():
        return None
    return float(binary_auroc(loss.float(), flipped.long()))


def memorisation(pred: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[float, float] | None:
    """(fraction of flipped samples predicted as their noisy label, ... as their clean label)."""
    flipped = noisy != clean
    if not flipped.any():
        return None
    p = pred[flipped]
    return float((p == noisy[flipped]).float().mean()), float((p == clean[flipped]).float().mean())


def suspected_mislabelled(
    index: torch.Tensor, given: torch.Tensor, pred: torch.Tensor, confidence: torch.Tensor
) -> torch.Tensor:
    """Positions (into the inputs) where ``pred != given``, sorted by decreasing confidence."""
    disagree = (pred != given).nonzero().squeeze(1)
    order = confidence[disagree].argsort(descending=True, stable=True)
    return disagree[order]


class LabelNoiseDiagnostics(Callback):
    """Per-sample loss tracking, loss AUROC, memorisation curve, mislabelled-sample CSV.

    Args:
        every_n_epochs: compute and log the epoch metrics every this many epochs
            (tracking itself is per batch and cheap).
        max_rows: cap of ``suspected_mislabelled.csv`` (None: every disagreeing sample).
    """

    def __init__(self, every_n_epochs: int = 1, max_rows: int | None = None):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
        self.every_n_epochs, self.max_rows = every_n_epochs, max_rows
        self.history: list[dict] = []
        self._size = 0
        self._warned = False

    # --------------------------------------------------------------- state
    def _allocate(self, n: int, device: torch.device) -> None:
        self._size = n
        self.loss = torch.full((n,), float("nan"), device=device)
        self.pred = torch.full((n,), -1, dtype=torch.long, device=device)
        self.confidence = torch.zeros(n, device=device)
        self.given = torch.full((n,), -1, dtype=torch.long, device=device)
        self.clean = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)  # this epoch
        self.updated = torch.full((n,), -1, dtype=torch.long, device=device)  # epoch of the last value

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._size:
            self.seen.zero_()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (isinstance(outputs, dict) and "per_sample_loss" in outputs and "logits" in outputs):
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"{type(self).__name__}: training_step of {type(pl_module).__name__} does not return "
                    "'per_sample_loss' and 'logits'; label-noise diagnostics are off"
                )
            return
        batch = training_part(batch)
        index = batch["index"]
        if not self._size:  # first batch: one buffer slot per sample of the full training set
            n = len(getattr(trainer.datamodule, "noisy_targets", []))
            self._allocate(max(n, int(index.max()) + 1), index.device)
        probs = outputs["logits"].detach().float().softmax(1)
        conf, pred = probs.max(1)
        self.loss[index] = outputs["per_sample_loss"].detach().float()
        self.pred[index], self.confidence[index] = pred, conf
        self.given[index] = batch["target"]
        if "clean_target" in batch:
            self.clean[index] = batch["clean_target"]
        self.seen[index] = True
        self.updated[index] = trainer.current_epoch

    # ----------------------------------------------------------- per epoch
    def _gathered(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """The tracked arrays, merged over processes: each sample's newest value, from whichever process
        saw it last (the shuffle gives a sample to another process in another epoch)."""
        arrays = {"loss": self.loss, "pred": self.pred, "confidence": self.confidence, "given": self.given,
                  "clean": self.clean, "seen": self.seen, "updated": self.updated}
        trainer = pl_module.trainer
        if trainer.world_size == 1:
            return arrays
        g = {k: pl_module.all_gather(v) for k, v in arrays.items()}  # [W, N]
        owner = g["updated"].argmax(0)  # the first process holding the newest value (0 when none has one)
        cols = torch.arange(owner.shape[0], device=owner.device)
        return {k: v[owner, cols] for k, v in g.items()} | {"seen": g["seen"].any(0)}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._size or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        a = self._gathered(pl_module)
        s = a["seen"]
        loss, pred, given, clean = a["loss"][s], a["pred"][s], a["given"][s], a["clean"][s]
        row: dict[str, float] = {"epoch": trainer.current_epoch, "seen": int(s.sum())}
        if (clean >= 0).all():
            flipped = given != clean
            row["flipped_fraction"] = float(flipped.float().mean())
            auroc = loss_auroc(loss, flipped)
            if auroc is not None:
                row["loss_auroc"] = auroc
                row["loss_clean"] = float(loss[~flipped].mean())
                row["loss_flipped"] = float(loss[flipped].mean())
            mem = memorisation(pred, given, clean)
            if mem is not None:
                row["memorised"], row["flipped_clean_acc"] = mem
        row["disagree_fraction"] = float((pred != given).float().mean())
        self.history.append(row)
        for key in ("loss_auroc", "memorised", "flipped_clean_acc", "loss_clean", "loss_flipped", "disagree_fraction"):
            if key in row:
                pl_module.log(f"noise/{key}", row[key], on_step=False, on_epoch=True, sync_dist=False)
        writer = tensorboard_writer(trainer, type(self).__name__) if trainer.is_global_zero else None
        if writer is not None:  # the two loss distributions: how separable small-loss selection finds them
            groups = {"all": loss} if "loss_auroc" not in row else {"clean": loss[~flipped], "flipped": loss[flipped]}
            for name, values in groups.items():
                writer.add_histogram(f"noise/loss_hist_{name}", values.float().cpu(), trainer.global_step)

    # ---------------------------------------------------------------- end
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._size:
            return
        a = {k: v.cpu() for k, v in self._gathered(pl_module).items()}
        out = output_dir(trainer)
        if not trainer.is_global_zero or out is None:
            return
        tracked = (a["pred"] >= 0).nonzero().squeeze(1)  # every sample seen at least once
        t = {k: v[tracked] for k, v in a.items()}
        order = suspected_mislabelled(tracked, t["given"], t["pred"], t["confidence"])
        if self.max_rows is not None:
            order = order[: self.max_rows]
        known_clean = bool((t["clean"] >= 0).all())
        fields = ["index", "given_label", "predicted_label", "confidence", "loss"] + (["clean_label"] if known_clean else [])
        with open(out / "suspected_mislabelled.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for i in order.tolist():
                r = [int(tracked[i]), int(t["given"][i]), int(t["pred"][i]), f"{float(t['confidence'][i]):.6f}",
                     f"{float(t['loss'][i]):.6f}"]
                w.writerow(r + ([int(t["clean"][i])] if known_clean else []))
        if self.history:
            keys = list(dict.fromkeys(k for row in self.history for k in row))
            with open(out / "noise_diagnostics.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(self.history)
        np.savez(out / "per_sample_loss.npz", index=tracked.numpy(), **{k: v.numpy() for k, v in t.items()})
