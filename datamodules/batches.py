"""Datasets that hand out whole batches by tensor indexing.

A batch is a ``contracts.Batch``: ``image`` (uint8 until augmented on the device),
``target`` (the label trained on), ``clean_target`` and ``index`` (position in
the full training set, so per-sample statistics can be tracked).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from .contracts import CLEAN_TARGET, IMAGE, INDEX, TARGET, Batch


class IndexedTensorDataset(Dataset):
    """Rows ``indices`` of in-memory tensors; ``__getitems__`` makes a batch in one gather."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        clean_targets: torch.Tensor,
        indices: torch.Tensor | None = None,
    ):
        if indices is None:
            indices = torch.arange(len(images))
        self.images, self.targets, self.clean_targets = images, targets, clean_targets
        self.indices = indices.long()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return {
            IMAGE: self.images[rows],
            TARGET: self.targets[rows],
            CLEAN_TARGET: self.clean_targets[rows],
            INDEX: rows,
        }

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


def keep_batch(batch: dict) -> dict:
    """collate_fn for datasets whose ``__getitems__`` already returns a batch."""
    return batch
