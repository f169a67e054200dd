"""Callbacks the fault-tolerance tests inject into ``train.py`` runs (``--trainer.callbacks+=...``).

They live in tests/ because they exist only to break runs on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """Send ``signal_name`` to this very process once ``global_step`` reaches ``step``.

    SIGKILL ends it at once (no handler runs); SIGTERM goes through Lightning's
    handler, which finishes the current batch and raises ``SIGTERMException``.
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        self.step, self.signal_name = step, signal_name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def digest(tensor) -> str:
    return hashlib.sha256(tensor.cpu().long().numpy().tobytes()).hexdigest()


def parameter_digests(module) -> dict[str, str]:
    """One hash of the exact parameter bytes per top-level submodule (``backbone``, ``weighting_net``, ...)."""
    out: dict[str, hashlib._Hash] = {}
    for name, param in module.named_parameters():
        out.setdefault(name.split(".")[0], hashlib.sha256()).update(param.detach().cpu().numpy().tobytes())
    return {name: h.hexdigest() for name, h in out.items()}


class DumpDataView(pl.Callback):
    """Each process writes what it trains on to ``folder/rank{R}.json``: label/split hashes, its sample
    indices, and hashes of its final parameters (equal on every process only if gradients were averaged)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.indices: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial_parameters = parameter_digests(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        batch = batch["train"] if "train" in batch else batch  # MetaWeightNet: {"train": ..., "meta": ...}
        self.indices += batch["index"].tolist()

    def on_train_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        self.folder.mkdir(parents=True, exist_ok=True)
        out = {
            "world_size": trainer.world_size,
            "noisy_targets": digest(dm.noisy_targets),
            "train_indices": digest(dm.train_indices),
            "val_indices": digest(dm.val_indices),
            "seen_indices": self.indices,
            "checkpoint_io": type(trainer.strategy.checkpoint_io).__name__,
            "strategy": type(trainer.strategy).__name__,
            "initial_parameters": self.initial_parameters,
            "parameters": parameter_digests(pl_module),
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


class TraceSteps(pl.Callback):
    """Append one line per training step to ``path``: step, batch indices, RNG and weight digests (debugging aid)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import torch

        b = batch["train"] if "train" in batch else batch
        params = sum(float(p.double().sum()) for p in pl_module.parameters())
        line = {
            "step": trainer.global_step, "batch_idx": batch_idx, "index": digest(b["index"])[:12],
            "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:12],
            "params": f"{params:.10e}",
            "opt": [g["lr"] for o in trainer.optimizers for g in o.param_groups],
        }
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
