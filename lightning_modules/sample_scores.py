"""One eval-mode pass over every training image, for per-sample scores (losses, clean scores).

Methods that rank training samples (DivideMix's division, the clean scores of
``callbacks.detection``) need each sample scored once, not augmented, in eval mode. The datamodule
serves those images (``train_eval_dataloader()``, each image once over all processes; apply
``eval_transform``); under DDP each process scores its share into zero-filled tensors indexed by
sample index and the tensors are summed across processes, which gives every sample its one value.
Before scoring, every process takes rank 0's buffers (batch-norm statistics): DDP copies rank 0's
buffers into the others only at the start of each training forward, so after a step each process
holds the statistics of its own last batch, and the shares would come from slightly different models.
"""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch

from datamodules import contracts as c


@torch.no_grad()
def score_training_set(
    pl_module: pl.LightningModule,
    score_batch: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    loader: str = "train_eval_dataloader",
) -> dict[str, torch.Tensor]:
    """``score_batch(images, targets)`` -> {name: [..., B]} over every training image; returns
    {name: [..., N]} indexed by sample index (0 outside the training set), summed over processes.
    A collective under DDP: every process must call it. The caller sets train/eval modes.
    ``loader`` names the datamodule's loader (``heldout_dataloader``: a cross-validation fold)."""
    trainer = pl_module.trainer
    dm = trainer.datamodule
    for name in (loader, "eval_transform", "noisy_targets"):
        c.require(dm, name, "scoring the training set")
    share_rank_zero_buffers(pl_module)
    n = len(dm.noisy_targets)
    out: dict[str, torch.Tensor] = {}
    with trainer.precision_plugin.forward_context():
        for batch in getattr(dm, loader)():
            x = dm.eval_transform(batch["image"].to(pl_module.device))
            y, index = batch["target"].to(pl_module.device), batch["index"].to(pl_module.device)
            for name, value in score_batch(x, y).items():
                if name not in out:
                    out[name] = torch.zeros(*value.shape[:-1], n, device=pl_module.device)
                out[name][..., index] = value.float()
    return {name: trainer.strategy.reduce(value, reduce_op="sum") for name, value in out.items()}


def share_rank_zero_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers into every process (no-op without an initialised process group)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)
