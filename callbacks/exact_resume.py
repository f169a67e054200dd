"""Exact resume: what a Lightning 2.6 checkpoint restores, plus what it does not.

1. RNG states. Lightning 2.6 checkpoints hold the weights, optimisers, schedulers, loops and
callbacks, but not the RNG states (``seed_everything`` only seeds the start).
The batched augmentation (``datamodules/augment.py``) and dropout draw from
the global torch generators, so without this a run resumed from a checkpoint
would continue with other random crops/flips/dropout masks than the
uninterrupted run, and could not end with the same weights.

Restored in ``load_state_dict``, i.e. when Lightning restores callbacks at the
start of ``fit``, before any data is drawn. Under DDP only global rank 0's
states are saved (only rank 0 writes the checkpoint) and every process gets
them back; that is exact because ``seed_everything`` gives every process the
same seed and every process makes the same random calls per step (same
batch size, same transforms). For CUDA that holds for the generator of each
process's *own* device: rank 0's ``cuda:0`` generator has advanced exactly as
rank 1's ``cuda:1`` one, while rank 0's copy of ``cuda:1`` never moved. So
the state of the current device is saved, and restored onto each process's
current device.

2. The position in the epoch. The training loaders are resumable
(``datamodules/resumable.py``) and Lightning stores their state, but when
``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (every
per-step LR schedule here does) Lightning builds the loaders *before* it
restores the loops and then never hands them the saved state (Lightning issue
#20550, open for 2.5/2.6): the resumed epoch would restart from its first
batch. ``on_train_start`` runs after the restore and before the first batch
is drawn, so the pending states are loaded there (a no-op when Lightning
already did it or when not resuming).

3. Checkpoints taken inside a training step. Lightning's SLURM requeue handler
saves from a signal handler, so the checkpoint can fall between a batch's
fetch and its end; Lightning then replays that batch on resume. The loaders
count batches *handed out*; ``on_save_checkpoint`` rewrites their count to
the batches Lightning will treat as done, so the replayed batch is the same
one and no batch is skipped. (Such a mid-step checkpoint is still not
bit-exact: the weights may be half-updated. Step-boundary checkpoints --
``PeriodicCheckpoint``, SIGTERM, epoch ends -- are exact.)
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning import Callback


def collect_rng_states() -> dict[str, Any]:
    """torch (CPU and the current CUDA device), numpy and python generator states."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state()  # this process's device (see module docstring)
    return states


def _numpy_state() -> tuple:
    """numpy's legacy global state with the key array as a tensor: loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states` (CUDA states only where CUDA is in use now)."""
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "torch.cuda" in states and torch.cuda.is_available():
        state = states["torch.cuda"]
        if isinstance(state, (list, tuple)):  # older checkpoints: every device; rank 0 drew on the first
            state = state[0]
        torch.cuda.set_rng_state(state)  # onto this process's current device


class ExactResume(Callback):
    """RNG states into every checkpoint and back on resume; late-loads the train loaders' state (see above)."""

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            set_rng_states(state_dict)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        loader_states = fit_state.get("combined_loader") or []
        if not loader_states or "batches" not in loader_states[0]:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        # a batch whose step finished counts as done on resume; one still in progress is replayed
        done = progress.processed if progress.processed == progress.started else progress.completed
        in_flight = max(0, int(loader_states[0]["batches"]) - int(done))
        for state in loader_states:  # every loader of a CombinedLoader advanced once per batch
            if "batches" in state:
                state["batches"] = max(0, int(state["batches"]) - in_flight)

    def on_train_start(self, trainer, pl_module) -> None:
        # private, but it is exactly Lightning's own restore step (guarded by fit_loop.restarting)
        trainer.fit_loop._load_combined_loader_states()
