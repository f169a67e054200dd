"""Checkpoints written atomically on local disks: a kill while saving leaves the previous file usable.

Lightning's ``TorchCheckpointIO`` (2.6) writes through an fsspec transaction:
the bytes go to a temp file made by ``tempfile.mkstemp()`` in the *system*
temp folder, then ``shutil.move`` puts it in place. When ``/tmp`` is another
file system than the run folder (tmpfs, node-local disk: the usual case on a
cluster) that move is a copy into the truncated destination, so a kill or
pre-emption during the copy leaves a half-written ``last.ckpt``; nothing is
fsynced, so a node crash can do the same; and a killed save leaves a
checkpoint-sized file in ``/tmp``.

:class:`AtomicCheckpointIO` writes to a temp file *in the destination folder*,
fsyncs it, ``os.replace``-s it over the destination (atomic on POSIX within a
file system) and fsyncs the folder. Remote paths (``s3://`` ...) keep
Lightning's own writer. train.py installs it unless a run names another
``CheckpointIO`` in ``trainer.plugins``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_fabric.utilities.cloud_io import _is_local_file_protocol
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins import CheckpointIO, TorchCheckpointIO

from datamodules.atomic_files import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are all-or-nothing (temp file + fsync + ``os.replace``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(
        self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's loader, with one clear error for a file that is not a whole checkpoint
        (a text file gives a bare ``KeyError: 101`` otherwise)."""
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            return super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise unreadable_checkpoint(path, err) from err


def unreadable_checkpoint(path: _PATH, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"cannot read checkpoint {path}: it is not a complete PyTorch checkpoint (truncated, still being "
        f"written, or another kind of file) -- {type(err).__name__}: {err}"
    )


def with_atomic_checkpoint_io(plugins: Any) -> list:
    """``plugins`` (None, one plugin/name, or a list) plus an :class:`AtomicCheckpointIO` unless one
    ``CheckpointIO`` is already there (the user's choice wins)."""
    if plugins is None:
        plugins = []
    elif not isinstance(plugins, (list, tuple)):
        plugins = [plugins]
    plugins = list(plugins)
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins
