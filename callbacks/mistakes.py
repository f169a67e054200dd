"""The test images the model got wrong with the highest confidence, as a captioned grid.

Confident mistakes on the *clean* test set show what the network learnt
wrongly (often a class confusion copied from the training noise) and, on
data without clean labels, test-set label errors. Predictions come from the
logits ``test_step`` returns (no extra forward pass); each batch keeps at most
``k`` candidates, so the memory is ``k`` images per batch. Under DDP the
processes' candidates are merged before the top ``k`` are chosen.

Logged: ``{test_prefix}/confident_mistakes`` image; files
``mistakes_{test_prefix}.png`` and ``mistakes_{test_prefix}.csv`` (index, true,
predicted, confidence).
"""

from __future__ import annotations

import csv
import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from datamodules import contracts

from .inspection_helpers import (
    class_names_of, denormalize, log_figure, logits_from, num_classes_of, output_dir, plt, test_prefix_of,
)


def top_mistakes(
    confidence: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, k: int
) -> torch.Tensor:
    """Positions of the (at most) ``k`` wrong predictions with the highest confidence, most confident first."""
    wrong = (pred != target).nonzero().squeeze(1)
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order[:k]]


def mistakes_figure(images: torch.Tensor, rows: list[dict], ncols: int, title: str):
    """Grid of RGB images [N, 3, H, W] in [0, 1], each captioned ``true / pred (confidence)``."""
    n = len(rows)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.3 * nrows + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, r in zip(axes.flat, images, rows):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"true: {r['true']}\npred: {r['predicted']} ({r['confidence']:.2f})", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


class ConfidentMistakes(Callback):
    """Grid of the ``k`` most confident wrong test predictions.

    Args:
        k: number of images shown.
        ncols: grid columns.
    """

    def __init__(self, k: int = 16, ncols: int = 4):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if ncols < 1:
            raise ValueError(f"ncols must be >= 1, got {ncols}")
        self.k, self.ncols = k, ncols
        self.rows: dict[str, list[dict]] = {}
        self._reset()

    def _reset(self) -> None:
        self._conf, self._images, self._true, self._pred, self._index = [], [], [], [], []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        probs = logits_from(outputs, pl_module, batch).float().softmax(1)
        conf, pred = probs.max(1)
        keep = top_mistakes(conf, pred, batch["target"], self.k)
        if len(keep) == 0:
            return
        self._conf.append(conf[keep].cpu())
        self._images.append(batch["image"][keep].detach().cpu())
        self._true.append(batch["target"][keep].cpu())
        self._pred.append(pred[keep].cpu())
        index = batch.get("index")
        self._index.append(index[keep].cpu() if index is not None else keep.cpu())

    def _local_top(self) -> dict[str, torch.Tensor]:
        """This process's ``k`` most confident mistakes (CPU tensors, possibly empty)."""
        if not self._conf:
            return {}
        conf = torch.cat(self._conf)
        top = conf.argsort(descending=True, stable=True)[: self.k]
        parts = {"conf": self._conf, "images": self._images, "true": self._true, "pred": self._pred,
                 "index": self._index}
        return {name: torch.cat(values)[top] for name, values in parts.items()}

    def _top_over_processes(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        """Every process's candidates merged: under DDP each one saw only its share of the test set.

        Called on every process (a collective); candidate counts differ between processes, hence
        ``all_gather_object`` (``k`` images each) rather than a same-shape tensor gather.
        """
        local = self._local_top()
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return local
        shares: list[dict] = [{} for _ in range(trainer.world_size)]
        torch.distributed.all_gather_object(shares, local)
        shares = [s for s in shares if s]
        if not shares:
            return {}
        merged = {name: torch.cat([s[name] for s in shares]) for name in shares[0]}
        top = merged["conf"].argsort(descending=True, stable=True)[: self.k]
        return {name: v[top] for name, v in merged.items()}

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = self._top_over_processes(trainer)
        if not trainer.is_global_zero:
            return
        prefix = test_prefix_of(pl_module)
        if not best:
            self.rows[prefix] = []
            return
        conf, images, true, pred, index = (best[k] for k in ("conf", "images", "true", "pred", "index"))
        names = class_names_of(trainer, num_classes_of(trainer, pl_module))
        rows = [
            {"index": int(i), "true": names[int(t)], "predicted": names[int(p)], "confidence": float(c)}
            for i, t, p, c in zip(index, true, pred, conf)
        ]
        self.rows[prefix] = rows
        dm = trainer.datamodule
        normalised = contracts.offers(dm, "mean") and contracts.offers(dm, "std")  # else min-max scaled for display
        shown = denormalize(images, dm.mean, dm.std) if normalised else denormalize(images, None, None)
        if shown.shape[1] == 1:
            shown = shown.expand(-1, 3, -1, -1)
        fig = mistakes_figure(shown, rows, self.ncols, f"most confident {prefix} mistakes")
        log_figure(trainer, type(self).__name__, f"{prefix}/confident_mistakes", fig, f"mistakes_{prefix}.png")
        out = output_dir(trainer)
        if out is not None:
            with open(out / f"mistakes_{prefix}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["index", "true", "predicted", "confidence"])
                w.writeheader()
                w.writerows(rows)
