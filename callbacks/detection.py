"""How well a method finds the wrong labels, measured against the truth, and the list it would hand over.

At the end of training every method yields a per-sample *clean score* in [0, 1] (high: the label
looks right) and a suggested label:

* a method with ``detection_scores()`` gives its own (DivideMix: the loss-mixture posterior);
* any other one is scored here by its evaluated network's self-confidence: the softmax probability
  of the given label on the un-augmented training image, eval mode (CE, GCE, and the evaluated
  network of co-teaching or Meta-Weight-Net), the suggestion being its prediction.

Synthetic noise and CIFAR-N know which labels were flipped (``noisy != clean``), so the callback
reports the AUROC of the score for finding them and the precision / recall / F1 of the samples it
flags (score below ``threshold``): in ``detection/detection.json`` of the run folder, in
TensorBoard (``detection/*``), and the flagged samples, least clean first, in
``detection/suspected_mislabelled.csv`` (index, given label, suggested label, score).
The subfolder keeps the list apart from ``LabelNoiseDiagnostics``' own ``suspected_mislabelled.csv``.

A finished run is scored afterwards from its checkpoint (co-teaching's selection counts are in it)::

    python train.py validate --config RUN/config.yaml --ckpt_path RUN/checkpoints/last.ckpt \
        --trainer.callbacks+=callbacks.MislabelDetection
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Protocol, TypedDict

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torchmetrics.functional.classification import binary_auroc

from datamodules import contracts as c
from lightning_modules.sample_scores import score_training_set

DETECTION_DIR = "detection"


class DetectionScores(TypedDict):
    index: torch.Tensor  # [M] sample indices (into the datamodule's label arrays)
    score: torch.Tensor  # [M] clean score in [0, 1]
    suggested: torch.Tensor  # [M] suggested label


class ScoresOwnSamples(Protocol):
    def detection_scores(self) -> DetectionScores: ...


# ------------------------------------------------------------------ pure metrics
def detection_metrics(clean_score: torch.Tensor, flipped: torch.Tensor, threshold: float = 0.5,
                      flagged: torch.Tensor | None = None) -> dict:
    """AUROC of ``-clean_score`` for the flipped labels, and precision / recall / F1 of the flagged
    samples (``clean_score < threshold``, or the given ``flagged`` mask, e.g. cleanlab's issues).
    A metric that is undefined (no flipped or no clean sample for the AUROC, nothing flagged for the
    precision) is None."""
    if clean_score.shape != flipped.shape or clean_score.ndim != 1:
        raise ValueError(f"clean_score and flipped must be 1-D of one length, got {tuple(clean_score.shape)} "
                         f"and {tuple(flipped.shape)}")
    flipped = flipped.bool()
    flagged = clean_score < threshold if flagged is None else flagged.bool()
    tp = int((flagged & flipped).sum())
    n_flagged, n_flipped = int(flagged.sum()), int(flipped.sum())
    precision = tp / n_flagged if n_flagged else None
    recall = tp / n_flipped if n_flipped else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    auroc = None
    if 0 < n_flipped < len(flipped):
        auroc = float(binary_auroc(-clean_score.double(), flipped.long()))
    return {"auroc": auroc, "precision": precision, "recall": recall, "f1": f1, "num_flagged": n_flagged,
            "num_flipped": n_flipped, "num_samples": len(flipped), "threshold": threshold}


def flagged_rows(scores: DetectionScores, given: torch.Tensor, threshold: float) -> list[tuple[int, int, int, float]]:
    """(index, given label, suggested label, score) of the flagged samples, least clean first
    (ties by index). ``given`` is indexed by sample index."""
    index, score, suggested = scores["index"], scores["score"].double(), scores["suggested"]
    keep = (score < threshold).nonzero().squeeze(1)
    order = keep[torch.argsort(score[keep], stable=True)]
    return [(int(index[i]), int(given[index[i]]), int(suggested[i]), float(score[i])) for i in order]


def write_suspected_csv(path: Path, rows: list[tuple[int, int, int, float]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "given_label", "suggested_label", "score"])
        w.writerows([(i, g, s, f"{score:.6f}") for i, g, s, score in rows])


# ------------------------------------------------------------------ scoring
def self_confidence_scores(pl_module: pl.LightningModule) -> DetectionScores:
    """Softmax probability of the given label and the prediction of ``pl_module`` (its ``forward``:
    the evaluated network) on every un-augmented training image, eval mode. A collective under DDP."""

    def score_batch(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = pl_module(x).float()
        return {"score": torch.exp(-F.cross_entropy(logits, y, reduction="none")), "pred": logits.argmax(1)}

    was_training = pl_module.training
    pl_module.eval()
    scored = score_training_set(pl_module, score_batch)
    pl_module.train(was_training)
    index = pl_module.trainer.datamodule.train_indices
    return {"index": index.cpu(), "score": scored["score"].cpu()[index],
            "suggested": scored["pred"].cpu()[index].long()}


class MislabelDetection(Callback):
    """At the end of ``fit``: detection quality against the known flips, and the flagged-sample list.

    Args:
        threshold: a sample is flagged when its clean score is below this (0.5: a DivideMix posterior
            below one half, a given label the network gives less than even odds).
    """

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        if not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.result: dict | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``train.py validate --ckpt_path`` of a finished run: the same measurement for that checkpoint."""
        if trainer.state.fn == "validate":
            self.on_train_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        for name in ("train_eval_dataloader", "clean_targets"):  # the known flips are the truth it scores against
            c.require(dm, name, type(self).__name__)
        own = hasattr(pl_module, "detection_scores")
        scores = pl_module.detection_scores() if own else self_confidence_scores(pl_module)  # every process
        given, clean = dm.noisy_targets.cpu(), dm.clean_targets.cpu()
        flipped = (given != clean)[scores["index"]]
        result = detection_metrics(scores["score"], flipped, self.threshold)
        result["score"] = "method" if own else "self_confidence"
        result["method"] = type(pl_module).__name__
        self.result = result
        log_dir = trainer.log_dir  # a collective under DDP: every process asks
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics({f"detection/{k}": v for k, v in result.items()
                                if isinstance(v, float) and k != "threshold" and not math.isnan(v)},
                               step=trainer.global_step)
        if log_dir is None:
            return
        out = Path(log_dir) / DETECTION_DIR
        out.mkdir(parents=True, exist_ok=True)
        (out / "detection.json").write_text(json.dumps(result, indent=2))
        write_suspected_csv(out / "suspected_mislabelled.csv", flagged_rows(scores, given, self.threshold))
