"""A corrected ``noisy_labels.npz``: the labels of a run with some samples relabelled or pruned (left out
of training), in the format ``data.noisy_labels_path`` reads, so that any method can train on the
cleaned labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import noise
from .atomic_files import atomic_savez


def write_corrected_labels(source: Path, out: Path, index: np.ndarray, new_labels: np.ndarray,
                           prune: bool = False) -> dict:
    """Copy ``source`` (a run's ``noisy_labels.npz``) to ``out`` with ``noisy_targets[index] = new_labels``,
    or with ``prune`` the samples at ``index`` marked ``excluded`` (labels kept as they were; the
    datamodule leaves them out of training). ``noise_selected``, the (empirical) transition matrix and
    ``actual_noise_rate`` are recomputed from the labels. Returns the measured noise rate over all labels
    of the file before and after (pruned samples not counted after); ``measured_noise`` gives it for a
    subset such as the training set."""
    with np.load(source, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    missing = {"noisy_targets", "clean_targets"} - set(data)
    if missing:
        raise ValueError(f"{source} lacks {sorted(missing)}: not a noisy_labels.npz written by a run")
    noisy, clean = data["noisy_targets"].copy(), data["clean_targets"]
    index, new_labels = np.asarray(index, dtype=np.int64), np.asarray(new_labels, dtype=noisy.dtype)
    if index.shape != new_labels.shape or (len(index) and (index.min() < 0 or index.max() >= len(noisy))):
        raise ValueError(f"index and new_labels must have one shape and indices in 0..{len(noisy) - 1}")
    num_classes = int(data["transition_matrix"].shape[0]) if "transition_matrix" in data else int(noisy.max()) + 1
    if len(new_labels) and (new_labels.min() < 0 or new_labels.max() >= num_classes):
        raise ValueError(f"new labels must be in 0..{num_classes - 1}")
    before = float((noisy != clean).mean())
    excluded = left_out(data).copy()
    if prune:
        changed = int((~excluded[index]).sum())
        excluded[index] = True
        data["excluded"] = excluded
    else:
        changed = int((noisy[index] != new_labels).sum())
        noisy[index] = new_labels
    data["noisy_targets"] = noisy
    data["noise_selected"] = noisy != clean
    data["transition_matrix"] = noise.empirical_transition_matrix(
        torch.from_numpy(clean), torch.from_numpy(noisy), num_classes).numpy()
    data["actual_noise_rate"] = np.array((noisy != clean).mean())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(out, **data)
    return {"noise_rate_before": before, "noise_rate_after": float((noisy[~excluded] != clean[~excluded]).mean()),
            "fix": "prune" if prune else "relabel", "relabelled": 0 if prune else int(len(index)),
            "pruned": int(len(index)) if prune else 0, "changed": changed}


def measured_noise(source: Path, among: np.ndarray | None = None) -> float:
    """Fraction of wrong labels in a ``noisy_labels.npz`` (among ``among``, less pruned samples)."""
    with np.load(source, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    noisy, clean, excluded = data["noisy_targets"], data["clean_targets"], left_out(data)
    rows = np.arange(len(noisy)) if among is None else np.asarray(among, dtype=np.int64)
    rows = rows[~excluded[rows]]
    return float((noisy[rows] != clean[rows]).mean())


def left_out(data: dict[str, np.ndarray]) -> np.ndarray:
    """The ``excluded`` mask of a label file's arrays (all False for a file that prunes nothing)."""
    return data["excluded"] if "excluded" in data else np.zeros(len(data["noisy_targets"]), dtype=bool)
