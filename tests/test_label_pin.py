"""The noisy labels, splits, loaders and saved label files, pinned by sha256 for fixed seeds.

Why: the labels a run trains on are pure functions of the seeds, and resumed runs, saved
``noisy_labels.npz`` files and published results rely on that. A refactor of the datamodules
must reproduce them bit for bit. The constants were recorded from the pre-refactor code on
commit 10ebcbf (``NoisyImageFolder`` still inheriting ``NoisyCIFAR``); a change here means the
labels changed, not that the constants need updating.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import NoisyCIFAR10, NoisyCIFAR100, NoisyImageFolder, noise
from datamodules.noisy_cifar import save_noisy_labels
from test_image_folder import write_tree

REPO = Path(__file__).resolve().parents[1]
LABEL_PARTS = ("noisy_targets", "clean_targets", "noise_selected", "train_indices", "val_indices", "meta_indices",
               "heldout_indices")


def _update(h, name: str, value) -> None:
    h.update(name.encode())
    if isinstance(value, torch.Tensor):
        value = value.detach().numpy()
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(repr(value).encode())


def label_digest(dm) -> str:
    """sha256 of every label and index tensor, the transition matrix (to 1e-6) and the noise rate."""
    h = hashlib.sha256()
    for name in LABEL_PARTS:
        value = getattr(dm, name, None)
        _update(h, name, None if value is None else value.long())
    _update(h, "transition_matrix", np.round(dm.transition_matrix.double().numpy(), 6))
    _update(h, "actual_noise_rate", round(float(dm.actual_noise_rate), 9))
    _update(h, "state_dict", sorted((k, sorted(v.items()) if isinstance(v, dict) else v)
                                    for k, v in dm.state_dict().items()))
    return h.hexdigest()[:16]


def loader_digest(dm) -> str:
    """sha256 of the index and target order of the train, validation and test loaders (global seed 0)."""
    h = hashlib.sha256()
    loaders = {"train": dm.train_dataloader(), "val": dm.val_dataloader(), "test": dm.test_dataloader()}
    for name, loader in loaders.items():
        for batch in loader:
            batch = batch[0] if isinstance(batch, tuple) else batch  # a CombinedLoader's (batch, idx, loader idx)
            for part in (batch["train"], batch["meta"]) if "train" in batch else (batch,):
                _update(h, name, torch.cat([part["index"], part["target"], part["clean_target"]]))
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of every array in an .npz (not of the zip bytes, which hold timestamps)."""
    h = hashlib.sha256()
    with np.load(path) as z:
        for key in sorted(z.files):
            _update(h, key, z[key])
    return h.hexdigest()[:16]


@pytest.fixture(autouse=True)
def _global_seed(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")


# ---------------------------------------------------------------- fake CIFAR
CIFAR10_CASES = {
    "clean": (dict(val_size=100), "f28cf55e29f74caa", "f0ab6db4f6aa5eac"),
    "symmetric": (dict(noise_type="symmetric", noise_rate=0.4, noise_seed=1, split_seed=3, val_size=100),
                  "e8156ff1226c0814", "a21ec0b121b154a0"),
    "uniform": (dict(noise_type="uniform", noise_rate=0.3, noise_seed=2, val_size=0.2),
                "bbaff56190358087", "33dd65e6638d2e60"),
    "pairflip": (dict(noise_type="pairflip", noise_rate=0.2, train_subset=200, val_size=50),
                 "2be17ab9345574ed", "d59dd004312e79d9"),
    "asymmetric_meta": (dict(noise_type="asymmetric", noise_rate=0.3, noise_seed=5, meta_size=5, meta_seed=2,
                             val_size=100, val_clean_labels=True), "0078230d7d6be158", "0336e0bcc25ded00"),
    "folds": (dict(noise_type="symmetric", noise_rate=0.2, num_folds=5, fold=2, val_size=50),
              "f5c975d0b3fe5a15", "72b0f1dd872e0c27"),
}


@pytest.mark.parametrize("case", sorted(CIFAR10_CASES))
def test_fake_cifar10_labels_and_loaders(case, fake_cifar10_dir):
    kw, labels, loaders = CIFAR10_CASES[case]
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=32, **kw)
    dm.setup("fit")
    assert (label_digest(dm), loader_digest(dm)) == (labels, loaders)


def test_fake_cifar10_human_labels(tmp_path, fake_cifar10_dir):
    clean = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=0)
    clean.setup("fit")
    worst = noise.apply_noise(clean.clean_targets, "symmetric", 0.4, 10, seed=3).noisy.numpy()
    np.savez(tmp_path / "n.npz", clean_label=clean.clean_targets.numpy(), worse_label=worst)
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, meta_size=3, noise_type="human",
                      human_labels=str(tmp_path / "n.npz"), human_label_set="worst")
    dm.setup("fit")
    assert label_digest(dm) == "10dc14f709c91f5e"


def test_fake_cifar100_asymmetric_from_superclasses(fake_cifar100_dir):
    dm = NoisyCIFAR100(data_dir=str(fake_cifar100_dir), val_size=100, noise_type="asymmetric", noise_rate=0.4)
    dm.setup("fit")
    assert label_digest(dm) == "7c14fb0ac24ae3c5"


def test_saved_label_file_and_hparams_are_unchanged(tmp_path, fake_cifar10_dir):
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="symmetric", noise_rate=0.4)
    dm.setup("fit")
    save_noisy_labels(dm, tmp_path / "noisy_labels.npz")
    with np.load(tmp_path / "noisy_labels.npz") as z:
        assert str(z["dataset"]) == "CIFAR-10"
    assert file_digest(tmp_path / "noisy_labels.npz") == "8c7cac4a3e6754eb"
    assert sorted((k, v) for k, v in dm.hparams.items() if k != "data_dir") == [
        ("augmentation", "crop_flip"), ("batch_size", 128), ("download", False), ("fold", 0),
        ("human_label_set", None), ("human_labels", None), ("meta_batch_size", None), ("meta_seed", 0),
        ("meta_size", 0), ("noise_rate", 0.4), ("noise_seed", 0), ("noise_type", "symmetric"),
        ("noisy_labels_path", None), ("num_folds", 0), ("num_workers", 0), ("resident_on_device", False),
        ("serve_meta", True),  # added after the pin: a new option, its default keeps the old behaviour
        ("split_seed", 0), ("train_subset", None), ("val_clean_labels", False), ("val_size", 100),
    ]
    again = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100,
                         noisy_labels_path=str(tmp_path / "noisy_labels.npz"))
    again.setup("fit")
    assert torch.equal(again.noisy_targets, dm.noisy_targets)


# -------------------------------------------------------------- image folders
def _lists(root: Path, tmp_path: Path) -> dict:
    """Clothing1M-style lists over ``root/train``: labels unrelated to the folders, half verified."""
    files = sorted((root / "train").rglob("*.*"))
    (tmp_path / "noisy.txt").write_text("".join(f"{f.relative_to(root)} {i % 3}\n" for i, f in enumerate(files)))
    truth = {f: ["cat", "dog", "frog"].index(f.parent.name) for i, f in enumerate(files) if i % 4 < 2}
    (tmp_path / "clean.txt").write_text("".join(f"{f.relative_to(root)} {label}\n" for f, label in truth.items()))
    return dict(train_list=str(tmp_path / "noisy.txt"), clean_list=str(tmp_path / "clean.txt"),
                class_names=["cat", "dog", "frog"])


FOLDER_CASES = {
    "symmetric_meta": ({"train": 10}, dict(noise_type="symmetric", noise_rate=0.4, noise_seed=1, val_size=3,
                                           meta_size=2), "f495330acce9154c", "aa1fca141565cdd3"),
    "asymmetric_by_name": ({"train": 10}, dict(noise_type="asymmetric", noise_rate=0.5, val_size=0.2,
                                               asymmetric_map={"cat": "dog"}), "28abf6ae5c184855", "6f79e3abfa72dea6"),
    "own_val_split": ({"train": 8, "val": 2, "test": 1},
                      dict(noise_type="pairflip", noise_rate=0.3, val_clean_labels=True),
                      "6415e196a069a62d", "b0a065564ce72808"),
    "file_lists_human": ({"train": 8}, dict(noise_type="human", val_size=4, meta_size=1),
                         "d1a2cfcdddbd0505", "9dac2ba808706bb8"),
}


@pytest.mark.parametrize("case", sorted(FOLDER_CASES))
def test_image_folder_labels_and_loaders(case, tmp_path):
    layout, kw, labels, loaders = FOLDER_CASES[case]
    root = write_tree(tmp_path / "images", layout)
    if case == "file_lists_human":
        kw = {**kw, **_lists(root, tmp_path)}
    dm = NoisyImageFolder(root=str(root), batch_size=4, num_workers=0, image_size=8, **kw)
    dm.setup("fit")
    assert (label_digest(dm), loader_digest(dm)) == (labels, loaders)


# --------------------------------------------------------------- real CIFAR-10
@pytest.fixture(scope="module")
def real_cifar10(request) -> Path:
    """``data/cifar-10-batches-py`` in the repository, else the copy in ../shared/data; skip without either."""
    if (REPO / "data" / "cifar-10-batches-py").is_dir():
        return REPO / "data"
    return request.getfixturevalue("real_cifar10_dir")


REAL_CASES = {
    "symmetric": (dict(noise_type="symmetric", noise_rate=0.5), "d69e0d6c7a964fcc"),
    "asymmetric_meta": (dict(noise_type="asymmetric", noise_rate=0.4, noise_seed=1, meta_size=100), "72f6e6f8868574b1"),
}


@pytest.mark.parametrize("case", sorted(REAL_CASES))
def test_real_cifar10_labels(case, real_cifar10):
    kw, expected = REAL_CASES[case]
    dm = NoisyCIFAR10(data_dir=str(real_cifar10), **kw)
    dm.setup("fit")
    assert label_digest(dm) == expected


def test_real_cifar10n_human_labels(real_cifar10):
    found = [p for p in (real_cifar10 / "CIFAR-10_human.pt", REPO.parent / "shared" / "data" / "CIFAR-10_human.pt")
             if p.is_file()]
    if not found:
        pytest.skip("the published CIFAR-10N file (CIFAR-10_human.pt) is not available")
    dm = NoisyCIFAR10(data_dir=str(real_cifar10), noise_type="human", human_labels=str(found[0]),
                      human_label_set="worst", split_seed=1)
    dm.setup("fit")
    assert label_digest(dm) == "a4eb4ebb2edc90f5"


def test_image_folder_keeps_its_hparams(tmp_path):
    """Every hparam an image-folder run recorded before (checkpoints, hparams.yaml) keeps its value."""
    root = write_tree(tmp_path, {"train": 4})
    dm = NoisyImageFolder(root=str(root), batch_size=4, num_workers=0, image_size=8, val_size=3, meta_size=2,
                          noise_type="symmetric", noise_rate=0.4, noise_seed=1)
    recorded = [
        ("asymmetric_map", None), ("augmentation", "crop_flip"), ("batch_size", 4), ("check_files", True),
        ("class_names", None), ("clean_list", None), ("crop_padding", None), ("image_size", 8),
        ("mean", (0.485, 0.456, 0.406)), ("meta_batch_size", None), ("meta_seed", 0), ("meta_size", 2),
        ("noise_rate", 0.4), ("noise_seed", 1), ("noise_type", "symmetric"), ("noisy_labels_path", None),
        ("num_classes", None), ("num_workers", 0), ("on_bad_file", "skip"), ("resident_on_device", False),
        ("split_seed", 0), ("std", (0.229, 0.224, 0.225)), ("test_list", None), ("train_list", None),
        ("train_subset", None), ("val_clean_labels", False), ("val_list", None), ("val_size", 3),
    ]
    assert [(k, dm.hparams[k]) for k, _ in recorded] == recorded
