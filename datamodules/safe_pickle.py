"""Unpickling that can only build plain containers and numpy arrays.

The CIFAR python archives and the CIFAR-N ``.pt`` label files are pickles;
``pickle.load`` on them would run whatever code a tampered file names. This
unpickler allows only the few numpy constructors those files need.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

import numpy as np

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    ("numpy.core.numeric", "_frombuffer"),  # how protocol-5 pickles store arrays
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            return getattr(np.dtypes, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def load(stream: BinaryIO, encoding: str = "ASCII") -> Any:
    """``pickle.load`` restricted to containers and numpy arrays."""
    return _NumpyOnlyUnpickler(stream, encoding=encoding).load()


def loads(data: bytes, encoding: str = "ASCII") -> Any:
    return load(io.BytesIO(data), encoding=encoding)
