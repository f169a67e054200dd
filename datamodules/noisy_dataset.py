"""NoisyDataModule: the noisy-label logic every dataset shares; a dataset only says how to read itself.

The base owns everything that must be identical across datasets, so that a label, a split or a
resume check means the same thing for CIFAR and for a user's image folder: the argument checks,
the noise draw (or reading a saved ``noisy_labels.npz``), the train/validation split, the clean meta
set, K folds, saving the labels to the run folder and the fingerprints a resume checks, the loaders
and the on-device augmentation.

Adding a dataset is one small class. It sets ``dataset_name``, ``num_classes``, ``mean``, ``std``,
``image_shape`` (class attributes, or in ``__init__`` before ``super().__init__``) and reads its
splits; class names and an asymmetric class map are optional::

    class NoisySVHN(NoisyDataModule):
        dataset_name, num_classes, image_shape = "SVHN", 10, (3, 32, 32)
        mean, std = (0.44, 0.44, 0.47), (0.20, 0.20, 0.20)

        def __init__(self, data_dir: str = "data", **kwargs):
            super().__init__(**kwargs)
            self.data_dir = data_dir

        def read_splits(self):
            self.class_names = [str(d) for d in range(10)]
            train, test = read_svhn(self.data_dir, "train"), read_svhn(self.data_dir, "test")
            return train, None, test  # each with .images (uint8 [N, 3, 32, 32]) and .labels (int64 [N])

A split is any object with ``labels`` (the true labels, int64 [N]) that :meth:`make_dataset` can
turn into a dataset; by default it also has ``images`` (uint8 [N, C, H, W]). A dataset with a
validation split of its own returns it as the second element, with ``given`` labels too (the labels
its files give, used unless ``val_clean_labels``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from . import augment, noise
from .atomic_files import atomic_savez
from .batches import IndexedTensorDataset, keep_batch
from .contracts import IMAGE, META, TRAIN
from .folds import check_folds, split_fold
from .label_fingerprints import check_data_state, check_run_folder_labels, data_state
from .meta_split import select_meta
from .plain_npz import read_npz
from .resumable import make_loader
from .train_augmentations import TRAIN_AUGMENTATIONS

NOISY_LABELS_FILE = "noisy_labels.npz"


class NoisyDataModule(pl.LightningDataModule):
    """Images with controlled, saved label noise; subclasses read the data (see the module docstring).

    Args:
        batch_size: training batch size (per process).
        num_workers: loader workers; 0 is usually fastest for in-memory images (a batch is one gather).
        val_size: validation images held out of the training set (int) or a fraction (float < 1);
            unused when the dataset has a validation split of its own.
        val_clean_labels: validate against clean labels instead of the noisy ones.
        split_seed: seed of the train/validation permutation (and of the folds).
        train_subset: keep only this many training images (CPU-scale experiments).
        noise_type: clean | symmetric | uniform | pairflip | asymmetric | human.
        noise_rate: probability r that a label is redrawn (synthetic noise only).
        noise_seed: seed of the noise draw; identical on every process.
        noisy_labels_path: a ``noisy_labels.npz`` written by an earlier run, to reuse its exact noise. One
            with an ``excluded`` mask (``corrected_labels.write_corrected_labels(prune=True)``) also leaves
            those samples out of training.
        augmentation: training transform, run batched on the device: ``crop_flip`` (4 px
            reflect-padded crop + flip), ``crop_flip_twice`` (two such views, ``image`` and ``image2``:
            DivideMix) or ``none``; see ``train_augmentations.TRAIN_AUGMENTATIONS``.
        meta_size: clean *meta set* images per class (Meta-Weight-Net), taken from the training set
            (never from validation, only where the clean label is known) with their clean labels and
            excluded from training. When > 0, ``train_dataloader`` yields ``{"train": batch, "meta": batch}``
            (the meta loader cycles).
        meta_seed: seed of the meta-set choice.
        meta_batch_size: meta batch size (default: ``batch_size``, capped at the meta-set size).
        serve_meta: False: the meta set is held out of training but not served; training batches are
            plain. For the baseline of a comparison with a meta-set method, which must train on the same
            images without seeing the clean ones.
        resident_on_device: keep the images and labels on the training device (the whole of CIFAR is
            150 MB of uint8) and make batches there: no host-to-device copy per batch. Needs num_workers 0
            and a dataset held in memory.
        num_folds, fold: K-fold cross-validation (``scripts/confident_learning.py``): the training set
            (after ``train_subset``) is split into ``num_folds`` folds (seeded by ``split_seed``); fold
            ``fold`` is held out (``heldout_indices``, ``heldout_dataloader()``) and the rest trained on.
            0 folds: off.
    """

    #: written into ``noisy_labels.npz`` and checkpoints; a resume on another dataset is refused by it
    dataset_name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]
    #: False for datasets decoded by the loader's workers: no image tensor to keep on the device or hand out
    images_in_memory: bool = True

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int | float = 5000,
        val_clean_labels: bool = False,
        split_seed: int = 0,
        train_subset: int | None = None,
        noise_type: str = "clean",
        noise_rate: float = 0.0,
        noise_seed: int = 0,
        noisy_labels_path: str | None = None,
        augmentation: str = "crop_flip",
        meta_size: int = 0,
        meta_seed: int = 0,
        meta_batch_size: int | None = None,
        serve_meta: bool = True,
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
        if resident_on_device and not self.images_in_memory:
            raise ValueError(f"resident_on_device needs images held in memory; {type(self).__name__} decodes files")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if augmentation not in TRAIN_AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; allowed: {', '.join(TRAIN_AUGMENTATIONS)}")
        self.train_transform = self.make_train_transform(augmentation)
        self.eval_transform = augment.Normalize(self.mean, self.std)
        # the raw splits (read once, in setup) and what setup derives from them
        self._train: Any = None
        self._val: Any = None
        self._test: Any = None
        self.class_names: list[str] | None = None
        self.clean_targets: torch.Tensor | None = None
        self.clean_known: torch.Tensor | None = None  # bool per training sample: is its clean label verified
        self.noisy_targets: torch.Tensor | None = None
        self.noise_selected: torch.Tensor | None = None
        self.excluded: torch.Tensor | None = None  # [N] bool: samples a pruned label file leaves out of training
        self.transition_matrix: torch.Tensor | None = None
        self.actual_noise_rate: float | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.meta_indices: torch.Tensor | None = None
        self.heldout_indices: torch.Tensor | None = None
        self.noisy_labels_file: Path | None = None

    # ------------------------------------------------------ dataset hooks
    def read_splits(self) -> tuple[Any, Any | None, Any | None]:
        """(train, own validation split or None, test or None); may set ``class_names``. Called once."""
        raise NotImplementedError(f"{type(self).__name__} must implement read_splits()")

    def class_map(self) -> dict[int, int] | None:
        """The asymmetric-noise class map of this dataset (None: it has none)."""
        return None

    def human_noisy_labels(self) -> torch.Tensor:
        """The real (human) noisy label of every training sample, for ``noise_type: human``."""
        raise ValueError(f"noise_type 'human' is not available for {self.dataset_name}")

    def known_clean_labels(self) -> torch.Tensor:
        """Which training samples' ``labels`` are verified (the meta set and the empirical matrix use only those)."""
        return torch.ones(len(self._train.labels), dtype=torch.bool)

    def make_dataset(self, split: Any, targets: torch.Tensor, clean: torch.Tensor, rows: torch.Tensor) -> Dataset:
        """Rows ``rows`` of ``split`` with these labels; batches shaped as ``contracts.Batch``."""
        return IndexedTensorDataset(split.images, targets, clean, rows)

    def split_images(self, split: Any) -> torch.Tensor:
        """All uint8 images [N, C, H, W] of a split."""
        if not self.images_in_memory:
            raise NotImplementedError(
                f"{type(self).__name__} decodes its files in the loader and holds no image tensor; "
                "callbacks that need the training images (e.g. PatchWhitening) work with NoisyCIFAR10/100 only"
            )
        return split.images

    def make_train_transform(self, augmentation: str) -> torch.nn.Module:
        return TRAIN_AUGMENTATIONS[augmentation](self.mean, self.std)

    # ----------------------------------------------------------- labels
    def _read(self) -> None:
        if self._train is None:
            self._train, self._val, self._test = self.read_splits()

    def setup(self, stage: str | None = None) -> None:
        if self.noisy_targets is not None:
            return
        self._read()
        self.clean_targets = self._train.labels
        self.clean_known = self.known_clean_labels()
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
            self.noisy_targets = self.human_noisy_labels()
            self.noise_selected = self.noisy_targets != self.clean_targets
            known = self.clean_known
            self.transition_matrix = noise.empirical_transition_matrix(
                self.clean_targets[known], self.noisy_targets[known], c
            )
            return
        class_map = self.class_map() if hp.noise_type == "asymmetric" else None
        if hp.noise_type == "asymmetric" and not class_map:
            raise ValueError(f"asymmetric noise is not defined for {self.dataset_name}: it has no class map")
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
                f"the {len(self.clean_targets)} training labels of {self.dataset_name}"
            )
        if matrix.shape != (self.num_classes, self.num_classes) or int(noisy.max()) >= self.num_classes:
            raise ValueError(f"{path} has labels or a matrix for another class count than {self.num_classes}")
        self.noisy_targets, self.transition_matrix, self.noise_selected = noisy, matrix, selected
        if "excluded" in z:
            excluded = torch.from_numpy(z["excluded"]).bool()
            if excluded.shape != noisy.shape:
                raise ValueError(f"{path}: its excluded mask has {len(excluded)} entries for {len(noisy)} labels")
            self.excluded = excluded

    def _split(self) -> None:
        """Validation (held out of train, or the dataset's own split), meta set, subset, folds."""
        hp, n = self.hparams, len(self.clean_targets)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(hp.split_seed))
        if self._val is None:
            n_val = int(round(hp.val_size * n)) if isinstance(hp.val_size, float) else int(hp.val_size)
            if n_val >= n:
                raise ValueError(f"val_size {hp.val_size} leaves no training images out of {n}")
            self.val_indices, pool = perm[:n_val].sort().values, perm[n_val:]
        else:
            self.val_indices, pool = torch.arange(len(self._val.labels)), perm
        trusted = pool[self.clean_known[pool]]  # the meta set needs verified labels
        self.meta_indices, _ = select_meta(
            self.clean_targets, trusted, hp.meta_size, self.num_classes, hp.meta_seed, self.class_names
        )
        self.train_indices = pool[~torch.isin(pool, self.meta_indices)]
        if self.excluded is not None:  # pruned labels: those samples are not trained on
            self.train_indices = self.train_indices[~self.excluded[self.train_indices]]
        if hp.train_subset is not None:
            if not 0 < hp.train_subset <= len(self.train_indices):
                raise ValueError(f"train_subset must be in 1..{len(self.train_indices)}, got {hp.train_subset}")
            self.train_indices = self.train_indices[: hp.train_subset]
        self.train_indices = self.train_indices.sort().values
        if hp.num_folds:
            self.train_indices, self.heldout_indices = split_fold(
                self.train_indices, hp.num_folds, hp.fold, hp.split_seed
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

    # ------------------------------------------------------- the images
    def _need_setup(self, what: str) -> None:
        if self.train_indices is None:
            raise RuntimeError(f"{type(self).__name__}.{what}() needs setup() first")

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split's uint8 images [N, C, H, W] and the (noisy) labels trained on, in
        ``train_indices`` order (after ``setup``): for callbacks and scripts that need the data itself."""
        self._need_setup("training_images")
        return self.split_images(self._train)[self.train_indices], self.noisy_targets[self.train_indices]

    def training_set_images(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images of the whole training set (every split's source), rows ``rows`` (all when None),
        indexed like ``noisy_targets`` and a batch's ``index``."""
        self._need_setup("training_set_images")
        images = self.split_images(self._train)
        return images if rows is None else images[rows]

    def test_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split's uint8 images and true labels (after ``setup``)."""
        self._need_setup("test_images")
        if self._test is None:
            raise ValueError(f"{self.dataset_name} has no test split")
        return self.split_images(self._test), self._test.labels

    # ----------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        """Seeded, resumable, DDP-aware loaders: see ``datamodules/resumable.py``."""
        return make_loader(
            dataset, self.trainer, batch_size or self.hparams.batch_size, shuffle, self.hparams.num_workers,
            collate_fn=keep_batch, resident_on_device=self.hparams.resident_on_device,
        )

    def _eval_loader(self, split: Any, targets: torch.Tensor, clean: torch.Tensor, rows: torch.Tensor) -> DataLoader:
        return self._loader(self.make_dataset(split, targets, clean, rows), False, 2 * self.hparams.batch_size)

    def state_dict(self) -> dict:
        """Fingerprints of the labels and split, checked on resume (``datamodules/label_fingerprints.py``)."""
        return data_state(self)

    def load_state_dict(self, state_dict: dict) -> None:
        if self.trainer is None or self.trainer.state.fn == "fit":  # testing a checkpoint needs no check
            check_data_state(self, state_dict)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        ds = self.make_dataset(self._train, self.noisy_targets, self.clean_targets, self.train_indices)
        train = self._loader(ds, shuffle=True)
        if not self.hparams.meta_size or not self.hparams.serve_meta:
            return train
        return CombinedLoader({TRAIN: train, META: self.meta_dataloader()}, mode="max_size_cycle")

    def meta_dataloader(self) -> DataLoader:
        """The clean meta set: ``target`` is the CLEAN label (that is what the meta set is for)."""
        ds = self.make_dataset(self._train, self.clean_targets, self.clean_targets, self.meta_indices)
        bs = min(self.hparams.meta_batch_size or self.hparams.batch_size, len(ds))
        return self._loader(ds, shuffle=True, batch_size=bs)

    def train_eval_dataloader(self) -> DataLoader:
        """The training images in order, not augmented (apply ``eval_transform``), each once over all
        processes: for methods that score every training sample (DivideMix's per-sample losses)."""
        return self._eval_loader(self._train, self.noisy_targets, self.clean_targets, self.train_indices)

    def heldout_dataloader(self) -> DataLoader:
        """The held-out cross-validation fold, in order, not augmented (apply ``eval_transform``)."""
        if not self.hparams.num_folds:
            raise ValueError("heldout_dataloader needs num_folds >= 2 (cross-validation)")
        return self._eval_loader(self._train, self.noisy_targets, self.clean_targets, self.heldout_indices)

    def val_dataloader(self) -> DataLoader:
        clean_labels = self.hparams.val_clean_labels
        if self._val is None:  # held out of train: noisy labels unless val_clean_labels
            targets = self.clean_targets if clean_labels else self.noisy_targets
            return self._eval_loader(self._train, targets, self.clean_targets, self.val_indices)
        val = self._val  # a split of its own: the labels its files give unless val_clean_labels
        return self._eval_loader(val, val.labels if clean_labels else val.given, val.labels, self.val_indices)

    def test_dataloader(self) -> DataLoader:
        test = self._test
        if test is None:
            rank_zero_warn(f"{self.no_test_split_warning}: testing on validation")
            return self.val_dataloader()
        return self._eval_loader(test, test.labels, test.labels, torch.arange(len(test.labels)))

    @property
    def no_test_split_warning(self) -> str:
        return f"{self.dataset_name} has no test split"

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
        if IMAGE not in batch:  # {"train": batch, "meta": batch} from a CombinedLoader
            return {name: augment.apply_transform(transform, sub, epoch) for name, sub in batch.items()}
        return augment.apply_transform(transform, batch, epoch)


def save_noisy_labels(dm: NoisyDataModule, path: Path) -> None:
    """Write labels, matrix and how they were made, atomically (no half-written file)."""
    hp = dm.hparams
    atomic_savez(
        path,
        noisy_targets=dm.noisy_targets.numpy(),
        clean_targets=dm.clean_targets.numpy(),
        noise_selected=dm.noise_selected.numpy(),
        transition_matrix=dm.transition_matrix.numpy(),
        dataset=np.array(dm.dataset_name),
        noise_type=np.array(hp.noise_type),
        noise_rate=np.array(hp.noise_rate),
        noise_seed=np.array(hp.noise_seed),
        actual_noise_rate=np.array(dm.actual_noise_rate),
        **({} if getattr(dm, "excluded", None) is None else {"excluded": dm.excluded.numpy()}),
    )
