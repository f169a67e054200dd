"""Test-only callback: records the logits NT-Xent builds, per process (tests/test_simclr.py, DDP test).

lightly's NTXentLoss gathers the projections of every process and scores each
sample against 2 * global_batch - 1 candidates; the shape of the logits that
reach its cross-entropy shows whether the negatives really came from all processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch


class _Recorder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, shapes: list):
        super().__init__()
        self.inner, self.shapes = inner, shapes

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.shapes.append([*logits.shape, int(labels.max())])
        return self.inner(logits, labels)


class GatherProbe(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir, self.shapes, self.batch_sizes = Path(out_dir), [], []

    def on_train_start(self, trainer, pl_module) -> None:
        crit = pl_module.criterion
        crit.cross_entropy = _Recorder(crit.cross_entropy, self.shapes)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_sizes.append(len(batch["image"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        info = {"world_size": trainer.world_size, "shapes": self.shapes, "batch_sizes": self.batch_sizes}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(info))
