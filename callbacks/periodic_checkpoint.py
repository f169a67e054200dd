"""``last-step.ckpt`` every N training steps and when a run is stopped (SIGTERM, exception).

train.py's ``checkpoint`` (a ``ModelCheckpoint``) saves at epoch ends: the
best-by-validation file and ``last.ckpt``. An epoch of a large run is long, so
a killed job would lose up to an epoch. Lightning's ``ModelCheckpoint`` cannot
save both every N steps and every epoch (the triggers are mutually exclusive),
so this second one only keeps a rolling ``last-step.ckpt``:

* every ``every_n_train_steps`` steps (survives SIGKILL / node loss, losing < N steps);
* on any exception, including Lightning's ``SIGTERMException`` (SIGTERM
  finishes the current batch, then stops): the exact interrupted state.

``--ckpt_path last`` picks the newest of ``last.ckpt`` and ``last-step.ckpt``
(Lightning compares their modification times), so a resume continues from
whichever is more recent. Written through the trainer's CheckpointIO
(atomic with train.py's default, ``callbacks/atomic_checkpoint.py``).
"""

from __future__ import annotations

from pytorch_lightning.callbacks import ModelCheckpoint

from .finite_loss import NonFiniteLossError


class PeriodicCheckpoint(ModelCheckpoint):
    """A rolling mid-epoch checkpoint (see module docstring). Lives next to train.py's checkpoints."""

    CHECKPOINT_NAME_LAST = "last-step"

    def __init__(self, every_n_train_steps: int = 500, dirpath: str | None = None):
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            every_n_train_steps=every_n_train_steps,
            save_top_k=0,  # no extra files: only the rolling last-step.ckpt
            save_last=True,
            save_on_exception=True,
            enable_version_counter=False,
        )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Only refresh ``last-step.ckpt`` (ModelCheckpoint would also write a top-k-named file); never
        after a non-finite loss (the state is not worth resuming from: ``callbacks/finite_loss.py``)."""
        if isinstance(exception, NonFiniteLossError):
            return
        if self._should_save_on_exception(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
