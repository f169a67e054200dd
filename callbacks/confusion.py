"""Confusion matrix on validation (every N epochs) and at test, plus a per-class table at test.

Predictions come from the logits the module's ``validation_step`` /
``test_step`` return (``{"logits": ...}``, as ``Classifier`` does): no extra
forward pass. A module returning nothing costs one extra forward per
evaluated batch, and only on the epochs where the matrix is due.

Logged: ``val/confusion_matrix`` and ``{test_prefix}/confusion_matrix``
images; at test also ``{test_prefix}/per_class`` text (markdown table), and in
the run folder ``confusion_{test_prefix}.png``, ``confusion_{test_prefix}.csv``
(the counts) and ``per_class_{test_prefix}.csv`` (precision, recall, F1,
support per class). The last matrices are kept in ``self.matrices`` by stage.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from .inspection_helpers import (
    class_names_of, log_figure, logits_from, num_classes_of, output_dir, plt, tensorboard_writer, test_prefix_of,
)

Normalize = Literal["none", "row"]


def confusion_figure(matrix: np.ndarray, class_names: list[str], normalize: Normalize = "none", title: str = ""):
    """Heat-map of a confusion matrix (rows: true class, columns: predicted), every cell annotated.

    ``normalize="row"`` colours and annotates each row's fractions (per-class recall on the diagonal);
    ``"none"`` shows counts.
    """
    if normalize not in ("none", "row"):
        raise ValueError(f"normalize must be 'none' or 'row', got {normalize!r}")
    c = len(class_names)
    m = matrix.astype(float)
    if normalize == "row":
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = max(4.5, 0.55 * c + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize == "row" else max(m.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize == "row" else "count")
    ax.set_xticks(range(c), class_names, rotation=45, ha="right")
    ax.set_yticks(range(c), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:  # annotations become unreadable beyond that (CIFAR-100: colour only)
        threshold = m.max() / 2 if m.max() > 0 else 0.5
        for i in range(c):
            for j in range(c):
                text = f"{m[i, j]:.2f}" if normalize == "row" else f"{int(matrix[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > threshold else "black")
    ax.set_title(f"{title}  (n = {int(matrix.sum())})")
    fig.tight_layout()
    return fig


def per_class_markdown(rows: list[dict]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
              for r in rows]
    return "\n".join(lines)


def weights_label(trainer: pl.Trainer) -> str:
    """Which weights a matrix is of: the checkpoint file a test or validate run loaded, else the epoch.

    ``trainer.test/validate(ckpt_path=...)`` restore the weights but not the epoch counter, which reads 0
    for a checkpoint evaluated alone and the fit's epoch count for one tested after a fit (``train.py``'s
    last and best checkpoints alike), so there the file is named instead. In a fit ``ckpt_path`` is the
    checkpoint resumed from, and the epoch counter is right.
    """
    if trainer.state.fn != TrainerFn.FITTING and trainer.ckpt_path:
        return Path(trainer.ckpt_path).name
    return f"epoch {trainer.current_epoch}"


class ConfusionMatrix(Callback):
    """Confusion-matrix heat-maps in TensorBoard; per-class precision/recall/F1 at test.

    Args:
        every_n_epochs: draw the validation matrix every this many epochs (0: never on validation).
        normalize: ``none`` (counts) or ``row`` (fraction of each true class).
        on_test: draw it (and the per-class table) at test.
    """

    def __init__(self, every_n_epochs: int = 5, normalize: Normalize = "none", on_test: bool = True):
        super().__init__()
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        if normalize not in ("none", "row"):
            raise ValueError(f"normalize must be 'none' or 'row', got {normalize!r}")
        self.every_n_epochs, self.normalize, self.on_test = every_n_epochs, normalize, on_test
        self.matrices: dict[str, torch.Tensor] = {}
        self.titles: dict[str, str] = {}
        self.per_class: dict[str, list[dict]] = {}
        self._metrics: MetricCollection | None = None

    # --------------------------------------------------------------- state
    def _reset(self, pl_module: pl.LightningModule) -> MetricCollection:
        c = num_classes_of(pl_module.trainer, pl_module)
        if self._metrics is None or self._metrics["confusion"].num_classes != c:
            self._metrics = MetricCollection(
                {
                    "confusion": MulticlassConfusionMatrix(num_classes=c),
                    "precision": MulticlassPrecision(num_classes=c, average=None),
                    "recall": MulticlassRecall(num_classes=c, average=None),
                    "f1": MulticlassF1Score(num_classes=c, average=None),
                }
            )
        self._metrics = self._metrics.to(pl_module.device)
        self._metrics.reset()
        return self._metrics

    def _val_due(self, trainer: pl.Trainer) -> bool:
        return (
            self.every_n_epochs > 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    # ---------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_due(trainer):
            self._reset(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._val_due(trainer):
            self._metrics["confusion"].update(logits_from(outputs, pl_module, batch), batch["target"])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_due(trainer):
            matrix = self._metrics["confusion"].compute().cpu()
            self.matrices["val"] = matrix
            self._draw(trainer, "val", matrix, png_name=None)

    # ---------------------------------------------------------------- test
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.on_test:
            self._reset(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.on_test:
            self._metrics.update(logits_from(outputs, pl_module, batch), batch["target"])

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.on_test:
            return
        prefix = test_prefix_of(pl_module)
        values = {k: v.cpu() for k, v in self._metrics.compute().items()}
        matrix = values["confusion"]
        self.matrices[prefix] = matrix
        names = class_names_of(trainer, len(matrix))
        support = matrix.sum(1).tolist()
        rows = [
            {
                "class": names[i],
                "precision": float(values["precision"][i]),
                "recall": float(values["recall"][i]),
                "f1": float(values["f1"][i]),
                "support": int(support[i]),
            }
            for i in range(len(matrix))
        ]
        self.per_class[prefix] = rows
        self._draw(trainer, prefix, matrix, png_name=f"confusion_{prefix}.png")
        if not trainer.is_global_zero:
            return
        writer = tensorboard_writer(trainer, type(self).__name__)
        if writer is not None:
            writer.add_text(f"{prefix}/per_class", per_class_markdown(rows), trainer.global_step)
        out = output_dir(trainer)
        if out is not None:
            with open(out / f"per_class_{prefix}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["class", "precision", "recall", "f1", "support"])
                w.writeheader()
                w.writerows(rows)
            np.savetxt(out / f"confusion_{prefix}.csv", matrix.numpy(), fmt="%d", delimiter=",",
                       header=",".join(names), comments="")

    def _draw(self, trainer: pl.Trainer, prefix: str, matrix: torch.Tensor, png_name: str | None) -> None:
        if not trainer.is_global_zero:
            return
        names = class_names_of(trainer, len(matrix))
        title = f"{prefix} confusion, {weights_label(trainer)}"
        self.titles[prefix] = title
        fig = confusion_figure(matrix.numpy(), names, self.normalize, title)
        log_figure(trainer, type(self).__name__, f"{prefix}/confusion_matrix", fig, png_name)
