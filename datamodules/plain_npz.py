"""Read an ``.npz`` of plain arrays, refusing anything else with a message that names what the file is.

numpy's own error for a pickled file ("If you trust the file you can load it unsafely using
allow_pickle") invites running whatever code the file carries; a label file never needs that.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _what_it_is(head: bytes) -> str:
    if head.startswith(_NPY_MAGIC):
        return "a single .npy array, not an .npz archive"
    if head[:1] == b"\x80" or head.startswith((b"(dp", b"(lp", b"c__builtin__", b"ccopy_reg")):
        return "a Python pickle, which is never unpickled here"
    return "not a numpy .npz archive"


def read_npz(path: str | Path, what: str, expected: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; ``what`` names the argument, ``expected`` the right file.

    Raises ``ValueError`` for a pickle, a ``.npy``, a corrupt archive or object (pickled) arrays.
    """
    path = Path(path).expanduser()
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(f"{what} {path} is {_what_it_is(head)}; expected {expected}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except ValueError as err:  # object arrays: numpy refuses them without allow_pickle
        raise ValueError(
            f"{what} {path} holds object (pickled) arrays, which are never unpickled here; expected {expected}"
        ) from err
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{what} {path} is a damaged archive ({err}); expected {expected}") from err
