"""CIFAR-10N / CIFAR-100N human label files (Wei et al., ICLR 2022).

The published ``.pt`` files are torch zip archives holding a pickled dict of
numpy arrays; they are read with a numpy-only unpickler, never with
``torch.load(weights_only=False)``. An ``.npz`` with the same keys works too.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from . import safe_pickle
from .plain_npz import read_npz

# human_label_set -> key in the published file
HUMAN_LABEL_KEYS: dict[str, dict[str, str]] = {
    "CIFAR-10": {
        "aggre": "aggre_label",
        "worst": "worse_label",
        "random1": "random_label1",
        "random2": "random_label2",
        "random3": "random_label3",
    },
    "CIFAR-100": {"noisy": "noisy_label"},
}


def read_label_file(path: str | Path) -> dict[str, np.ndarray]:
    """Every array in a CIFAR-N label file, by key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"human label file {path} does not exist")
    if path.suffix == ".npz":
        return read_npz(path, "human label file", "a CIFAR-N label file (.pt, or .npz of plain arrays)")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pickles:
                raise RuntimeError(f"{path} is a zip file without data.pkl")
            data = safe_pickle.loads(archive.read(pickles[0]))
    except zipfile.BadZipFile:
        with open(path, "rb") as f:  # an older plain-pickle .pt
            try:
                data = safe_pickle.load(f)
            except Exception as err:  # noqa: BLE001
                raise RuntimeError(f"cannot read human labels from {path}: {err}") from err
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(f"cannot read human labels from {path}: {err}") from err
    if not isinstance(data, dict):
        raise RuntimeError(f"{path} holds a {type(data).__name__}, expected a dict of label arrays")
    return {str(k): np.asarray(v) for k, v in data.items()}


def load_human_labels(
    path: str | Path, dataset: str, label_set: str, clean_labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """The ``label_set`` labels of ``path``, checked against the dataset they are for."""
    keys = HUMAN_LABEL_KEYS.get(dataset, {})
    if label_set not in keys:
        raise ValueError(
            f"unknown human_label_set {label_set!r} for {dataset}; allowed: {', '.join(keys) or 'none'}"
        )
    arrays = read_label_file(path)
    key = keys[label_set]
    if key not in arrays:
        raise ValueError(f"{path} has no '{key}' array (keys: {', '.join(sorted(arrays))}); is it a {dataset}N file?")
    labels = torch.as_tensor(arrays[key].astype(np.int64))
    if labels.shape != clean_labels.shape:
        raise ValueError(
            f"{path} has {len(labels)} '{key}' labels but the {dataset} training set has {len(clean_labels)} images"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{path} '{key}' labels span {low}..{high}, outside the {num_classes} classes of {dataset}")
    if "clean_label" in arrays:
        file_clean = torch.as_tensor(arrays["clean_label"].astype(np.int64))
        if file_clean.shape == clean_labels.shape:
            agree = float((file_clean == clean_labels).double().mean())
            if agree < 0.999:
                raise ValueError(
                    f"{path} 'clean_label' agrees with the dataset's labels on only {agree:.1%} of images: "
                    "the file is for another dataset or another image order"
                )
    return labels
