"""noisy_labels_path (and other label files) of the wrong kind: a clear error, never an invitation to unpickle."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from datamodules import NoisyCIFAR10
from datamodules.plain_npz import read_npz


class _Hostile:
    """Unpickling this would create ``marker`` (as ``os.system`` would run a command)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _wrong_files(tmp_path):
    marker = tmp_path / "UNPICKLED"
    files = {}
    files["pickle"] = tmp_path / "labels_pickle.npz"
    files["pickle"].write_bytes(pickle.dumps({"noisy_targets": np.zeros(3), "x": _Hostile(str(marker))}))
    files["object npz"] = tmp_path / "labels_object.npz"
    np.savez(files["object npz"], noisy_targets=np.array([_Hostile(str(marker))], dtype=object))
    files["npy"] = tmp_path / "labels.npy"
    np.save(files["npy"], np.zeros(3))
    files["text"] = tmp_path / "labels.txt"
    files["text"].write_text("0 1 2 3\n")
    files["truncated npz"] = tmp_path / "labels_half.npz"
    np.savez(tmp_path / "whole.npz", noisy_targets=np.arange(1000))
    files["truncated npz"].write_bytes((tmp_path / "whole.npz").read_bytes()[:300])
    return files, marker


EXPECTED = {
    "pickle": "is a Python pickle, which is never unpickled here",
    "object npz": "holds object (pickled) arrays, which are never unpickled here",
    "npy": "is a single .npy array, not an .npz archive",
    "text": "is not a numpy .npz archive",
    "truncated npz": "is a damaged archive",
}


def test_wrong_kinds_of_file_are_named_and_never_unpickled(tmp_path):
    files, marker = _wrong_files(tmp_path)
    for kind, path in files.items():
        with pytest.raises(ValueError) as err:
            read_npz(path, "noisy_labels_path", "a noisy_labels.npz written by a run")
        message = str(err.value)
        assert message.startswith(f"noisy_labels_path {path} {EXPECTED[kind]}"), (kind, message)
        assert message.endswith("expected a noisy_labels.npz written by a run"), message
        assert "allow_pickle" not in message and "trust" not in message, message
    assert not marker.exists()


def test_datamodule_refuses_a_pickled_noisy_labels_path(tmp_path, fake_cifar10_dir):
    files, marker = _wrong_files(tmp_path)
    for kind in ("pickle", "object npz"):
        dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noisy_labels_path=str(files[kind]))
        with pytest.raises(ValueError, match=f"^noisy_labels_path .* {re.escape(EXPECTED[kind])}") as err:
            dm.setup("fit")
        assert "allow_pickle" not in str(err.value)
    assert not marker.exists()


def test_plain_npz_is_read(tmp_path):
    np.savez(tmp_path / "ok.npz", a=np.arange(4), b=np.eye(2))
    z = read_npz(tmp_path / "ok.npz", "x", "y")
    assert sorted(z) == ["a", "b"] and z["a"].tolist() == [0, 1, 2, 3] and z["b"].tolist() == [[1, 0], [0, 1]]
