"""Hold out a small clean *meta set* (Meta-Weight-Net, Shu et al. 2019).

Methods that learn from a trusted subset (MW-Net's weighting net) need a few
images per class with their CLEAN labels, taken out of the training set so the
classifier never sees them with noisy labels. The choice depends only on the
clean labels, the candidate pool and a seed, so every process and every
repeated run holds out the same images.
"""

from __future__ import annotations

from typing import Sequence

import torch


def select_meta(
    clean_targets: torch.Tensor,
    pool: torch.Tensor,
    per_class: int,
    num_classes: int,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``per_class`` images of every class from ``pool`` (indices into ``clean_targets``).

    Returns ``(meta_indices, rest)``: the meta set sorted, and ``pool`` without
    it in its original order (so a later ``train_subset`` cut is unchanged in
    spirit). Raises when a class of the pool has fewer than ``per_class``
    images, naming the class, since a silently smaller or unbalanced meta set
    would change the method.
    """
    if per_class < 0:
        raise ValueError(f"meta_size must be >= 0 images per class, got {per_class}")
    pool = pool.long()
    if per_class == 0:
        return pool.new_empty(0), pool
    gen = torch.Generator().manual_seed(int(seed))
    labels = clean_targets[pool].long()
    chosen = []
    for c in range(num_classes):
        members = pool[labels == c]
        if len(members) < per_class:
            name = f" ({class_names[c]})" if class_names is not None and c < len(class_names) else ""
            raise ValueError(
                f"meta_size {per_class} per class is larger than class {c}{name}, which has only "
                f"{len(members)} candidates (training images outside validation, with a trusted label); lower meta_size"
            )
        chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    meta = torch.cat(chosen).sort().values
    keep = ~torch.isin(pool, meta)
    return meta, pool[keep]
