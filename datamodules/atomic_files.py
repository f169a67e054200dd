"""All-or-nothing file writes, for every layer: a kill while writing leaves the old file (or none).

Write to a temp file in the destination folder, fsync, ``os.replace`` over the destination (atomic
on POSIX within one file system) and fsync the folder. Lives in the bottom layer so that datamodules,
methods, callbacks and train.py can all use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch


@contextlib.contextmanager
def atomic_output(path: Path | str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temp file next to ``path``; on a clean exit it replaces ``path``, on an error it is removed.

    ``mode``: the permissions of the result (``mkstemp`` makes 0600 files; results are meant to be shared).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` into a temp file that then replaces ``path``."""
    with atomic_output(path) as f:
        write(f)


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """``torch.save(obj, path)`` such that ``path`` holds either its old content or all of the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_savez(path: Path | str, **arrays: Any) -> None:
    """``np.savez(path, **arrays)``, all or nothing (``path`` is used as given: name it ``.npz``)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
