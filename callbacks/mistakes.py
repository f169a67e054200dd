"""The test images the model got wrong with the highest confidence, as a captioned grid.

Confident mistakes on the *clean* test set show what the network learnt
wrongly (often a class confusion copied from the training noise) and, on
data without clean labels, test-set label errors. Predictions come from the
logits ``test_step`` returns (no extra forward pass); each batch keeps at most
``k`` candidates, so the memory is ``k`` images.

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

from .plotting import class_names_of, denormalize, log_figure, logits_from, num_classes_of, output_dir, plt


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

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        prefix = getattr(pl_module, "test_prefix", "test")
        if not self._conf:
            self.rows[prefix] = []
            return
        conf = torch.cat(self._conf)
        top = conf.argsort(descending=True, stable=True)[: self.k]
        images, true = torch.cat(self._images)[top], torch.cat(self._true)[top]
        pred, index = torch.cat(self._pred)[top], torch.cat(self._index)[top]
        names = class_names_of(trainer, num_classes_of(trainer, pl_module))
        rows = [
            {"index": int(i), "true": names[int(t)], "predicted": names[int(p)], "confidence": float(c)}
            for i, t, p, c in zip(index, true, pred, conf[top])
        ]
        self.rows[prefix] = rows
        dm = trainer.datamodule
        shown = denormalize(images, getattr(dm, "mean", None), getattr(dm, "std", None))
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
