"""NoisyCIFAR10 / NoisyCIFAR100: CIFAR with controlled, saved label noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader

from . import augment, cifar_source, noise
from .folds import check_folds, split_fold
from .meta_split import select_meta
from .batches import IndexedTensorDataset, keep_batch
from .resumable import make_loader
from .run_state import check_data_state, check_run_folder_labels, data_state
from .human_labels import HUMAN_LABEL_KEYS, load_human_labels
from .plain_npz import read_npz
from .atomic_files import atomic_savez

NOISY_LABELS_FILE = "noisy_labels.npz"


class NoisyCIFAR(pl.LightningDataModule):
    """Shared logic; use :class:`NoisyCIFAR10` or :class:`NoisyCIFAR100`.

    Args:
        data_dir: folder holding (or receiving) the official python archive.
        download: fetch the archive (md5-checked) when it is not in ``data_dir``.
        batch_size: training batch size (per process).
        num_workers: loader workers; 0 is usually fastest since a batch is one tensor gather.
        val_size: validation images held out of the training set (int) or a fraction (float < 1).
        val_clean_labels: validate against clean labels instead of the noisy ones.
        split_seed: seed of the train/validation permutation.
        train_subset: keep only this many training images (CPU-scale experiments).
        noise_type: clean | symmetric | uniform | pairflip | asymmetric | human.
        noise_rate: probability r that a label is redrawn (synthetic noise only).
        noise_seed: seed of the noise draw; identical on every process.
        human_labels: path to a CIFAR-N label file (.pt as published, or .npz).
        human_label_set: which human labels (CIFAR-10N: aggre, worst, random1..3; CIFAR-100N: noisy).
        noisy_labels_path: a ``noisy_labels.npz`` written by an earlier run, to reuse its exact noise.
        augmentation: training transform, run batched on the device: ``crop_flip`` (4 px
            reflect-padded crop + flip), ``crop_flip_twice`` (two such views, ``image`` and ``image2``:
            DivideMix) or ``none``; see ``augment.TRAIN_AUGMENTATIONS``.
        meta_size: clean *meta set* images per class (Meta-Weight-Net), taken from the training set
            (never from validation) with their clean labels and excluded from training. When > 0,
            ``train_dataloader`` yields ``{"train": batch, "meta": batch}`` (the meta loader cycles).
        meta_seed: seed of the meta-set choice.
        meta_batch_size: meta batch size (default: ``batch_size``, capped at the meta-set size).
        resident_on_device: keep the images and labels on the training device (the whole of CIFAR is
            150 MB of uint8) and make batches there: no host-to-device copy per batch. Needs num_workers 0.
        num_folds, fold: K-fold cross-validation (``scripts/confident_learning.py``): the training set
            (after ``train_subset``) is split into ``num_folds`` folds (seeded by ``split_seed``); fold
            ``fold`` is held out (``heldout_indices``, ``heldout_dataloader()``) and the rest trained on.
            0 folds: off.
    """

    spec: cifar_source.CifarSpec
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 5000,
        val_clean_labels: bool = False,
        split_seed: int = 0,
        train_subset: int | None = None,
        noise_type: str = "clean",
        noise_rate: float = 0.0,
        noise_seed: int = 0,
        human_labels: str | None = None,
        human_label_set: str | None = None,
        noisy_labels_path: str | None = None,
        augmentation: str = "crop_flip",
        meta_size: int = 0,
        meta_seed: int = 0,
        meta_batch_size: int | None = None,
        resident_on_device: bool = False,
        num_folds: int = 0,
        fold: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_folds(num_folds, fold)
        noise.check_noise_type(noise_type)
        noise.check_noise_rate(noise_rate)
        if noise_type in ("clean", "human") and noise_rate != 0:
            raise ValueError(f"noise_rate must be 0 for noise_type {noise_type!r}, got {noise_rate}")
        if noise_type == "human":
            if not human_labels or not human_label_set:
                raise ValueError("noise_type 'human' needs both human_labels (a CIFAR-N file) and human_label_set")
            allowed = HUMAN_LABEL_KEYS.get(self.spec.name, {})
            if human_label_set not in allowed:
                raise ValueError(
                    f"unknown human_label_set {human_label_set!r} for {self.spec.name}; allowed: {', '.join(allowed)}"
                )
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise ValueError(f"val_size as a fraction must be in [0, 1), got {val_size}")
        if isinstance(val_size, int) and val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if meta_size < 0 or (meta_batch_size is not None and meta_batch_size < 1):
            raise ValueError(f"meta_size must be >= 0 and meta_batch_size >= 1, got {meta_size}, {meta_batch_size}")
        if resident_on_device and num_workers > 0:
            raise ValueError(
                f"resident_on_device needs num_workers 0 (batches are made on the device), not {num_workers}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if augmentation not in augment.TRAIN_AUGMENTATIONS:
            raise ValueError(
                f"unknown augmentation {augmentation!r}; allowed: {', '.join(augment.TRAIN_AUGMENTATIONS)}"
            )
        self.train_transform = augment.TRAIN_AUGMENTATIONS[augmentation](self.mean, self.std)
        self.eval_transform = augment.Normalize(self.mean, self.std)
        self._train: cifar_source.CifarSplit | None = None
        self._test: cifar_source.CifarSplit | None = None

    # ----------------------------------------------------------------- data
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32)

    def class_map(self) -> dict[int, int] | None:
        """The asymmetric-noise class map of this dataset (None: it has none)."""
        return None

    def prepare_data(self) -> None:
        cifar_source.prepare(self.spec, self.hparams.data_dir, self.hparams.download)

    def _load(self) -> None:
        if self._train is not None:
            return
        folder = cifar_source.prepare(self.spec, self.hparams.data_dir, download=False)
        self.class_names = cifar_source.read_class_names(self.spec, folder)
        self._train = cifar_source.read_split(self.spec, folder, train=True)
        self._test = cifar_source.read_split(self.spec, folder, train=False)
        labels = torch.cat([self._train.labels, self._test.labels])
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise RuntimeError(f"{folder} has labels outside 0..{self.num_classes - 1}: not {self.spec.name}")

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "noisy_targets", None) is not None:
            return
        self._load()
        self.clean_targets = self._train.labels
        if self.hparams.noisy_labels_path:
            self._read_noisy_labels(self.hparams.noisy_labels_path)
        else:
            self._draw_noise()
        self.actual_noise_rate = noise.actual_noise_rate(self.clean_targets, self.noisy_targets)
        self._split()
        self._save_noisy_labels()

    def _draw_noise(self) -> None:
        hp, c = self.hparams, self.num_classes
        if hp.noise_type == "human":
            self.noisy_targets = load_human_labels(
                hp.human_labels, self.spec.name, hp.human_label_set, self.clean_targets, c
            )
            self.noise_selected = self.noisy_targets != self.clean_targets
            self.transition_matrix = noise.empirical_transition_matrix(self.clean_targets, self.noisy_targets, c)
            return
        class_map = self.class_map() if hp.noise_type == "asymmetric" else None
        if hp.noise_type == "asymmetric" and not class_map:
            raise ValueError(f"asymmetric noise is not defined for {self.spec.name}: it has no class map")
        draw = noise.apply_noise(self.clean_targets, hp.noise_type, hp.noise_rate, c, hp.noise_seed, class_map)
        self.noisy_targets, self.noise_selected = draw.noisy, draw.selected
        self.transition_matrix = noise.transition_matrix(hp.noise_type, hp.noise_rate, c, class_map)

    def _read_noisy_labels(self, path: str) -> None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"noisy_labels_path {path} does not exist")
        z = read_npz(path, "noisy_labels_path", f"a {NOISY_LABELS_FILE} written by a run")
        missing = {"noisy_targets", "clean_targets", "transition_matrix"} - set(z)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; expected a {NOISY_LABELS_FILE} written by a run")
        noisy, clean = torch.from_numpy(z["noisy_targets"]).long(), torch.from_numpy(z["clean_targets"]).long()
        matrix = torch.from_numpy(z["transition_matrix"])
        selected = torch.from_numpy(z["noise_selected"]) if "noise_selected" in z else noisy != clean
        if noisy.shape != self.clean_targets.shape or not torch.equal(clean, self.clean_targets):
            raise ValueError(
                f"{path} was written for another dataset: {len(noisy)} labels whose clean labels do not match "
                f"the {len(self.clean_targets)} training labels of {self.spec.name}"
            )
        if matrix.shape != (self.num_classes, self.num_classes) or int(noisy.max()) >= self.num_classes:
            raise ValueError(f"{path} has labels or a matrix for another class count than {self.num_classes}")
        self.noisy_targets, self.transition_matrix, self.noise_selected = noisy, matrix, selected

    def _split(self) -> None:
        n = len(self.clean_targets)
        val_size = self.hparams.val_size
        n_val = int(round(val_size * n)) if isinstance(val_size, float) else int(val_size)
        if n_val >= n:
            raise ValueError(f"val_size {val_size} leaves no training images out of {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed))
        self.val_indices, self.train_indices = perm[:n_val].sort().values, perm[n_val:]
        self.meta_indices, self.train_indices = select_meta(
            self.clean_targets, self.train_indices, self.hparams.meta_size, self.num_classes,
            self.hparams.meta_seed, getattr(self, "class_names", None),
        )
        if self.hparams.train_subset is not None:
            if not 0 < self.hparams.train_subset <= len(self.train_indices):
                raise ValueError(
                    f"train_subset must be in 1..{len(self.train_indices)}, got {self.hparams.train_subset}"
                )
            self.train_indices = self.train_indices[: self.hparams.train_subset]
        self.train_indices = self.train_indices.sort().values
        if self.hparams.num_folds:
            self.train_indices, self.heldout_indices = split_fold(
                self.train_indices, self.hparams.num_folds, self.hparams.fold, self.hparams.split_seed
            )

    def _save_noisy_labels(self) -> None:
        trainer = self.trainer
        # no logger: no run folder (trainer.log_dir would be the working directory, e.g. the repository)
        if trainer is None or trainer.logger is None or trainer.log_dir is None:
            return
        out = Path(trainer.log_dir)
        self.noisy_labels_file = out / NOISY_LABELS_FILE
        check_run_folder_labels(self, self.noisy_labels_file)  # on every process, so that all stop together
        if not trainer.is_global_zero:
            return
        out.mkdir(parents=True, exist_ok=True)
        save_noisy_labels(self, self.noisy_labels_file)

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split's uint8 images [N, C, H, W] and the (noisy) labels trained on, in
        ``train_indices`` order (after ``setup``): for callbacks and scripts that need the data itself."""
        if getattr(self, "train_indices", None) is None:
            raise RuntimeError(f"{type(self).__name__}.training_images() needs setup() first")
        return self._train.images[self.train_indices], self.noisy_targets[self.train_indices]

    # ------------------------------------------------------------- loaders
    def _loader(self, dataset: IndexedTensorDataset, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        """Seeded, resumable, DDP-aware loaders: see ``datamodules/resumable.py``."""
        return make_loader(
            dataset, self.trainer, batch_size or self.hparams.batch_size, shuffle, self.hparams.num_workers,
            collate_fn=keep_batch, resident_on_device=self.hparams.resident_on_device,
        )

    def state_dict(self) -> dict:
        """Fingerprints of the labels and split, checked on resume (``datamodules/run_state.py``)."""
        return data_state(self)

    def load_state_dict(self, state_dict: dict) -> None:
        if self.trainer is None or self.trainer.state.fn == "fit":  # testing a checkpoint needs no check
            check_data_state(self, state_dict)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        ds = IndexedTensorDataset(self._train.images, self.noisy_targets, self.clean_targets, self.train_indices)
        train = self._loader(ds, shuffle=True)
        if not self.hparams.meta_size:
            return train
        return CombinedLoader({"train": train, "meta": self.meta_dataloader()}, mode="max_size_cycle")

    def meta_dataloader(self) -> DataLoader:
        """The clean meta set: ``target`` is the CLEAN label (that is what the meta set is for)."""
        ds = IndexedTensorDataset(self._train.images, self.clean_targets, self.clean_targets, self.meta_indices)
        bs = min(self.hparams.meta_batch_size or self.hparams.batch_size, len(ds))
        return self._loader(ds, shuffle=True, batch_size=bs)

    def train_eval_dataloader(self) -> DataLoader:
        """The training images in order, not augmented (apply ``eval_transform``), each once over all
        processes: for methods that score every training sample (DivideMix's per-sample losses)."""
        ds = IndexedTensorDataset(self._train.images, self.noisy_targets, self.clean_targets, self.train_indices)
        return self._loader(ds, shuffle=False, batch_size=2 * self.hparams.batch_size)

    def heldout_dataloader(self) -> DataLoader:
        """The held-out cross-validation fold, in order, not augmented (apply ``eval_transform``)."""
        if not self.hparams.num_folds:
            raise ValueError("heldout_dataloader needs num_folds >= 2 (cross-validation)")
        ds = IndexedTensorDataset(self._train.images, self.noisy_targets, self.clean_targets, self.heldout_indices)
        return self._loader(ds, shuffle=False, batch_size=2 * self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        targets = self.clean_targets if self.hparams.val_clean_labels else self.noisy_targets
        ds = IndexedTensorDataset(self._train.images, targets, self.clean_targets, self.val_indices)
        return self._loader(ds, shuffle=False, batch_size=2 * self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        ds = IndexedTensorDataset(self._test.images, self._test.labels, self._test.labels)
        return self._loader(ds, shuffle=False, batch_size=2 * self.hparams.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def eval_batch(self, batch: dict) -> dict:
        """Normalise a batch already on its device, as evaluation batches are (callbacks.test_oracle)."""
        return augment.apply_transform(self.eval_transform, batch)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Augment (training) or only normalise (evaluation) on the batch's device."""
        training = self.trainer is not None and self.trainer.training
        transform = self.train_transform if training else self.eval_transform
        epoch = self.trainer.current_epoch if getattr(transform, "uses_position", False) else 0
        if "image" not in batch:  # {"train": batch, "meta": batch} from a CombinedLoader
            return {name: augment.apply_transform(transform, sub, epoch) for name, sub in batch.items()}
        return augment.apply_transform(transform, batch, epoch)


def save_noisy_labels(dm: NoisyCIFAR, path: Path) -> None:
    """Write labels, matrix and how they were made, atomically (no half-written file)."""
    hp = dm.hparams
    atomic_savez(
        path,
        noisy_targets=dm.noisy_targets.numpy(),
        clean_targets=dm.clean_targets.numpy(),
        noise_selected=dm.noise_selected.numpy(),
        transition_matrix=dm.transition_matrix.numpy(),
        dataset=np.array(dm.spec.name),
        noise_type=np.array(hp.noise_type),
        noise_rate=np.array(hp.noise_rate),
        noise_seed=np.array(hp.noise_seed),
        actual_noise_rate=np.array(dm.actual_noise_rate),
    )


class NoisyCIFAR10(NoisyCIFAR):
    __doc__ = NoisyCIFAR.__doc__
    spec = cifar_source.CIFAR10
    num_classes = 10
    mean, std = augment.CIFAR10_MEAN, augment.CIFAR10_STD

    def class_map(self) -> dict[int, int]:
        return dict(noise.CIFAR10_ASYMMETRIC_MAP)


class NoisyCIFAR100(NoisyCIFAR):
    __doc__ = NoisyCIFAR.__doc__
    spec = cifar_source.CIFAR100
    num_classes = 100
    mean, std = augment.CIFAR100_MEAN, augment.CIFAR100_STD

    def class_map(self) -> dict[int, int]:
        """Next fine class within the same superclass, from the archive's coarse labels."""
        self._load()
        fine, coarse = self._train.labels, self._train.coarse_labels
        fine_to_coarse = torch.zeros(self.num_classes, dtype=torch.long)
        fine_to_coarse[fine] = coarse
        return noise.superclass_successor_map(fine_to_coarse.tolist())
