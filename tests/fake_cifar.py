"""Tiny datasets in the official CIFAR python layout, written by the tests themselves.

Images are learnable: each class has its own colour and a bright square at a
class-specific position, plus pixel noise, so a small network separates them
in a few epochs.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np


def class_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, 3, 32, 32] images whose content depends on the label."""
    n = len(labels)
    hues = rng.uniform(40, 215, size=(num_classes, 3))
    x = rng.normal(0, 25, size=(n, 3, 32, 32)) + hues[labels][:, :, None, None]
    for i, y in enumerate(labels):
        r, c = divmod(int(y) % 16, 4)
        x[i, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 60
    return np.clip(x, 0, 255).astype(np.uint8)


def _batch(images: np.ndarray, labels: np.ndarray, label_key: str, extra: dict | None = None) -> dict:
    d = {
        "batch_label": "fake",
        label_key: [int(v) for v in labels],
        "data": images.reshape(len(images), 3072),
        "filenames": [f"img_{i:05d}.png" for i in range(len(images))],
    }
    d.update(extra or {})
    return d


def write_fake_cifar10(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` (5 train batches + test + meta); return the folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    ytr = np.arange(n_train) % 10
    rng.shuffle(ytr)
    yte = np.arange(n_test) % 10
    xtr, xte = class_images(ytr, 10, rng), class_images(yte, 10, rng)
    for k, part in enumerate(np.array_split(np.arange(n_train), 5)):
        with open(folder / f"data_batch_{k + 1}", "wb") as f:
            pickle.dump(_batch(xtr[part], ytr[part], "labels"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_batch(xte, yte, "labels"), f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n_train // 5, "num_vis": 3072}, f)
    return folder


def write_fake_cifar100(root: Path, n_train: int = 1000, n_test: int = 200, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python``; superclass of fine class f is a fixed shuffle, 5 fines each."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_to_coarse = np.repeat(np.arange(20), 5)
    rng.shuffle(fine_to_coarse)
    ytr = np.arange(n_train) % 100
    yte = np.arange(n_test) % 100
    xtr, xte = class_images(ytr, 100, rng), class_images(yte, 100, rng)
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        with open(folder / name, "wb") as f:
            pickle.dump(_batch(x, y, "fine_labels", {"coarse_labels": [int(v) for v in fine_to_coarse[y]]}), f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f)
    np.save(folder.parent / "fine_to_coarse.npy", fine_to_coarse)
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` as a .tar.gz the way the official archives are (one top-level folder)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    pickle.dump(obj, buf)
    return buf.getvalue()
