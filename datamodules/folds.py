"""K-fold cross-validation over the training indices (out-of-sample predictions for confident learning)."""

from __future__ import annotations

import torch


def check_folds(num_folds: int, fold: int) -> None:
    if num_folds == 0:
        if fold != 0:
            raise ValueError(f"fold {fold} needs num_folds >= 2, got num_folds 0 (no cross-validation)")
        return
    if int(num_folds) != num_folds or num_folds < 2:
        raise ValueError(f"num_folds must be 0 (off) or an integer >= 2, got {num_folds}")
    if int(fold) != fold or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1} for num_folds {num_folds}, got {fold}")


def cv_folds(indices: torch.Tensor, num_folds: int, seed: int) -> list[torch.Tensor]:
    """``num_folds`` disjoint folds covering ``indices``, by a permutation seeded with ``seed``; fold
    sizes differ by at most one, each fold sorted."""
    check_folds(num_folds, 0)
    if num_folds > len(indices):
        raise ValueError(f"num_folds {num_folds} exceeds the {len(indices)} training samples")
    perm = torch.randperm(len(indices), generator=torch.Generator().manual_seed(int(seed)))
    return [indices[part].sort().values for part in torch.tensor_split(perm, num_folds)]


def split_fold(indices: torch.Tensor, num_folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices without fold ``fold``, the held-out fold), both sorted."""
    check_folds(num_folds, fold)
    folds = cv_folds(indices, num_folds, seed)
    train = torch.cat([f for k, f in enumerate(folds) if k != fold]).sort().values
    return train, folds[fold]
