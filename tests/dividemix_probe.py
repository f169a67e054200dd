"""A callback the DivideMix DDP test injects into ``train.py`` runs: each process writes the
per-sample losses DivideMix gathers across processes, and its current division."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl


class DumpDivision(pl.Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        losses = pl_module.per_sample_losses()  # a collective: every process calls it
        prob = pl_module.clean_prob.cpu().numpy().tobytes()
        self.folder.mkdir(parents=True, exist_ok=True)
        out = {
            "world_size": trainer.world_size,
            "losses": losses.cpu().tolist(),
            "clean_prob": hashlib.sha256(prob).hexdigest(),
            "division_epoch": pl_module.division_epoch,
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))
