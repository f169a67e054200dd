"""NoisyImageFolder: a user's own images (class folders or Clothing1M-style file lists) with label noise.

Two layouts:

- class folders: ``root/train/<class>/*.jpg|png|...``, optional ``root/val/<class>/...`` and
  ``root/test/<class>/...`` with the same class folders. The folder is the label.
- file lists (Clothing1M): text files of ``relative/path.jpg label`` lines (``train_list``,
  optional ``val_list`` / ``test_list``), paths relative to ``root``; an optional ``clean_list``
  of the same form gives the verified labels of some training images (Clothing1M's
  ``clean_label_kv.txt``).

Batches are shaped like the CIFAR ones: ``image`` uint8 [B, 3, S, S] (decoded and
resized to ``image_size`` in the DataLoader workers with PIL), ``target``,
``clean_target``, ``index`` (position in the training list). Augmentation runs
batched on the device, as for CIFAR, for any image size.

Label noise: the labels the files give are taken as they are (``noise_type``
``clean``, or ``human`` when they are known to be noisy, e.g. Clothing1M);
synthetic noise (symmetric, uniform, pairflip, asymmetric with
``asymmetric_map``) can be drawn on top, from ``noise_seed``. Where no clean
label is known, ``clean_target`` is the file's label (``clean_known`` says which
are real); the meta set is then drawn only from images with a known clean label.

The noise, split, meta-set, saving and resuming logic is NoisyCIFAR's (this
class inherits it), so every attribute (``noisy_targets``, ``clean_targets``,
``noise_selected``, ``transition_matrix``, ``actual_noise_rate``,
``train_indices``, ``val_indices``, ``meta_indices``, ``class_names``,
``num_classes``, ``image_shape``) and ``noisy_labels.npz`` mean the same thing.
When the data has its own validation split, ``val_indices`` index that split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pytorch_lightning.utilities import CombinedLoader, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from . import augment, noise
from .meta_split import select_meta
from .noisy_cifar import NoisyCIFAR

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class FolderSpec:
    """What NoisyCIFAR's saving / resuming code needs to know of a dataset: its name."""

    name: str


@dataclass
class FileSplit:
    """One split: image paths, the label the files give, and clean labels where known."""

    paths: list[str]
    given: torch.Tensor  # int64 [N]: the folder's / list's label
    labels: torch.Tensor  # int64 [N]: clean label where known, else the given one
    clean_known: torch.Tensor  # bool [N]


# --------------------------------------------------------------------- scanning
def scan_class_folders(split_dir: Path) -> tuple[list[str], list[str], list[int]]:
    """(class names sorted, file paths, labels) of ``split_dir/<class>/<file>``; dot-files ignored."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} is not a folder")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>")
    paths, labels, empty = [], [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (split_dir / name).rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            empty.append(name)
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    if empty:
        raise ValueError(f"empty class folders in {split_dir}: {', '.join(empty)}")
    return classes, paths, labels


def read_file_list(list_file: Path, root: Path) -> tuple[list[str], list[int]]:
    """``path label`` lines (Clothing1M ``*_kv.txt``); blank lines and ``#`` comments skipped."""
    if not list_file.is_file():
        raise FileNotFoundError(f"file list {list_file} does not exist")
    paths, labels = [], []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise ValueError(f"{list_file}:{n}: expected 'path label' with a label >= 0, got {line!r}")
        paths.append(str(root / parts[0]))
        labels.append(int(parts[1]))
    if not paths:
        raise ValueError(f"file list {list_file} has no entries")
    return paths, labels


def check_image(path: str) -> str | None:
    """None if PIL can identify and verify ``path``, else the reason it cannot."""
    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"{type(err).__name__}: {err}"


def load_image(path: str, size: int) -> torch.Tensor:
    """Decode ``path`` to RGB and resize to ``size`` x ``size`` (bilinear): uint8 [3, size, size]."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            array = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RuntimeError(f"cannot decode image {path}: {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageFileDataset(Dataset):
    """Rows ``indices`` of a file list; ``__getitems__`` decodes a whole batch (in a worker)."""

    def __init__(self, paths: Sequence[str], targets: torch.Tensor, clean_targets: torch.Tensor,
                 indices: torch.Tensor, image_size: int):
        self.paths, self.targets, self.clean_targets = list(paths), targets, clean_targets
        self.indices, self.image_size = indices.long(), image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return {
            "image": torch.stack([load_image(self.paths[r], self.image_size) for r in rows.tolist()]),
            "target": self.targets[rows],
            "clean_target": self.clean_targets[rows],
            "index": rows,
        }

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


# ------------------------------------------------------------------- datamodule
class NoisyImageFolder(NoisyCIFAR):
    """Images from files (class folders or file lists) with controlled or real label noise.

    Args:
        root: the dataset folder (class-folder layout) or the base of the paths in the file lists.
        batch_size, num_workers: loader settings; decoding runs in the workers (use several).
        image_size: every image is resized to ``image_size`` x ``image_size`` in the workers.
        train_list, val_list, test_list: Clothing1M-style ``path label`` files (file-list layout).
        clean_list: ``path label`` file of verified labels for some training images.
        class_names: names of the classes (file-list layout; default ``"0"``, ``"1"``, ...).
        num_classes: class count for the file-list layout (default: largest label + 1).
        on_bad_file: ``skip`` (report each unreadable / non-image file and drop it) or ``error``.
        check_files: verify every file with PIL in ``setup`` (reads headers; turn off for huge sets).
        val_size: held out of ``train`` when the data has no validation split (int or fraction).
        noise_type, noise_rate, noise_seed: synthetic noise on top of the files' labels, or
            ``clean`` / ``human`` (take the labels as they are).
        asymmetric_map: class map of ``asymmetric`` noise, by name or id (``{"cat": "dog"}``).
        mean, std: normalisation (default: ImageNet statistics).
        augmentation: ``crop_flip`` or ``none``; crop padding is ``crop_padding`` px
            (default ``image_size // 8``, the 4 px of CIFAR's 32).
        Other arguments as NoisyCIFAR (``split_seed``, ``train_subset``, ``meta_size``, ...).
    """

    spec = FolderSpec("image_folder")

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 2,
        image_size: int = 32,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        clean_list: str | None = None,
        class_names: list[str] | None = None,
        num_classes: int | None = None,
        on_bad_file: Literal["skip", "error"] = "skip",
        check_files: bool = True,
        val_size: int | float = 0.1,
        val_clean_labels: bool = False,
        split_seed: int = 0,
        train_subset: int | None = None,
        noise_type: str = "clean",
        noise_rate: float = 0.0,
        noise_seed: int = 0,
        asymmetric_map: Mapping[str, str] | Mapping[int, int] | None = None,
        noisy_labels_path: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augmentation: str = "crop_flip",
        crop_padding: int | None = None,
        meta_size: int = 0,
        meta_seed: int = 0,
        meta_batch_size: int | None = None,
    ):
        super(NoisyCIFAR, self).__init__()  # skip NoisyCIFAR.__init__: it checks CIFAR-only options
        self.save_hyperparameters()
        self.hparams.resident_on_device = False  # read by NoisyCIFAR's loaders
        noise.check_noise_type(noise_type)
        noise.check_noise_rate(noise_rate)
        if noise_type in ("clean", "human") and noise_rate != 0:
            raise ValueError(f"noise_rate must be 0 for noise_type {noise_type!r}, got {noise_rate}")
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if meta_size < 0 or (meta_batch_size is not None and meta_batch_size < 1):
            raise ValueError(f"meta_size must be >= 0 and meta_batch_size >= 1, got {meta_size}, {meta_batch_size}")
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise ValueError(f"val_size as a fraction must be in [0, 1), got {val_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)}, {list(std)}")
        if (val_list or test_list or clean_list) and not train_list:
            raise ValueError("val_list / test_list / clean_list need a train_list (file-list layout)")
        padding = image_size // 8 if crop_padding is None else crop_padding
        if not 0 <= padding < image_size:
            raise ValueError(f"crop_padding must be in 0..{image_size - 1}, got {padding}")
        self.mean, self.std = tuple(mean), tuple(std)
        if augmentation == "crop_flip":
            self.train_transform = augment.CropFlip(self.mean, self.std, padding=padding)
        elif augmentation in augment.TRAIN_AUGMENTATIONS:
            self.train_transform = augment.TRAIN_AUGMENTATIONS[augmentation](self.mean, self.std)
        else:
            allowed = ", ".join(augment.TRAIN_AUGMENTATIONS)
            raise ValueError(f"unknown augmentation {augmentation!r}; allowed: {allowed}")
        self.eval_transform = augment.Normalize(self.mean, self.std)
        self._train = self._val = self._test = None
        self.bad_files: list[tuple[str, str]] = []
        self._index()
        if noise_type == "asymmetric" and not asymmetric_map:
            raise ValueError("asymmetric noise on an image folder needs asymmetric_map ({source class: target class})")
        if asymmetric_map:
            self._asymmetric_map = self._class_ids(asymmetric_map)

    # ------------------------------------------------------------ indexing
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.hparams.image_size, self.hparams.image_size)

    def class_map(self) -> dict[int, int] | None:
        return getattr(self, "_asymmetric_map", None)

    def _class_ids(self, mapping: Mapping) -> dict[int, int]:
        ids = {name: i for i, name in enumerate(self.class_names)}
        out = {}
        for src, dst in mapping.items():
            pair = []
            for c in (src, dst):
                if isinstance(c, int) and 0 <= c < self.num_classes:
                    pair.append(c)
                elif str(c) in ids:
                    pair.append(ids[str(c)])
                else:
                    raise ValueError(f"asymmetric_map names class {c!r}, not one of {', '.join(self.class_names)}")
            out[pair[0]] = pair[1]
        return out

    def _index(self) -> None:
        """Find the files and labels of every split (no decoding): cheap, so done in ``__init__``."""
        hp, root = self.hparams, Path(self.hparams.root).expanduser()
        if hp.train_list:
            self._index_lists(root)
            return
        self.class_names, paths, labels = scan_class_folders(root / "train")
        if hp.num_classes is not None and hp.num_classes != len(self.class_names):
            found = len(self.class_names)
            raise ValueError(f"num_classes is {hp.num_classes} but {root / 'train'} has {found} class folders")
        self.num_classes = len(self.class_names)
        self._train = self._split_from(paths, labels)
        for name in ("val", "test"):
            if (root / name).is_dir():
                classes, p, l = scan_class_folders(root / name)
                if classes != self.class_names:
                    missing, extra = set(self.class_names) - set(classes), set(classes) - set(self.class_names)
                    raise ValueError(
                        f"classes of {root / name} differ from {root / 'train'}: missing {sorted(missing)}, "
                        f"extra {sorted(extra)}"
                    )
                setattr(self, f"_{name}", self._split_from(p, l))

    def _index_lists(self, root: Path) -> None:
        hp = self.hparams
        lists = {name: read_file_list(Path(f).expanduser(), root)
                 for name, f in (("train", hp.train_list), ("val", hp.val_list), ("test", hp.test_list)) if f}
        top = max(max(labels) for _, labels in lists.values()) + 1
        self.num_classes = hp.num_classes or (len(hp.class_names) if hp.class_names else top)
        if top > self.num_classes:
            raise ValueError(f"file lists hold label {top - 1} but num_classes is {self.num_classes}")
        if hp.class_names and len(hp.class_names) != self.num_classes:
            raise ValueError(f"{len(hp.class_names)} class_names for {self.num_classes} classes")
        self.class_names = list(hp.class_names or [str(i) for i in range(self.num_classes)])
        clean = {}
        if hp.clean_list:
            cp, cl = read_file_list(Path(hp.clean_list).expanduser(), root)
            if max(cl) >= self.num_classes:
                raise ValueError(f"{hp.clean_list} holds label {max(cl)} but num_classes is {self.num_classes}")
            clean = dict(zip(cp, cl))
        for name, (paths, labels) in lists.items():
            setattr(self, f"_{name}", self._split_from(paths, labels, clean))

    @staticmethod
    def _split_from(paths: list[str], labels: list[int], clean: Mapping[str, int] | None = None) -> FileSplit:
        given = torch.tensor(labels, dtype=torch.long)
        known = torch.tensor([p in clean for p in paths]) if clean else torch.ones(len(paths), dtype=torch.bool)
        true = torch.tensor([clean.get(p, l) for p, l in zip(paths, labels)]) if clean else given.clone()
        return FileSplit(paths, given, true.long(), known)

    def _drop_bad_files(self, split: FileSplit, name: str) -> FileSplit:
        """Verify every file; report each bad one by path, then skip it or fail (``on_bad_file``)."""
        bad = [(p, why) for p in split.paths if (why := check_image(p)) is not None]
        if not bad:
            return split
        self.bad_files += bad
        listing = "\n".join(f"  {p}: {why}" for p, why in bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        if self.hparams.on_bad_file == "error":
            raise ValueError(f"{len(bad)} unreadable or non-image files in the {name} split:\n{listing}")
        rank_zero_warn(f"skipping {len(bad)} unreadable or non-image files in the {name} split:\n{listing}")
        keep = torch.tensor([p not in {b for b, _ in bad} for p in split.paths])
        kept = FileSplit([p for p, k in zip(split.paths, keep.tolist()) if k], split.given[keep], split.labels[keep],
                         split.clean_known[keep])
        left = torch.bincount(kept.given, minlength=self.num_classes)
        if len(kept.paths) == 0 or (name == "train" and bool((left == 0).any())):
            empty = [self.class_names[c] for c in (left == 0).nonzero().flatten().tolist()]
            raise ValueError(f"after skipping bad files the {name} split has empty classes: {', '.join(empty)}")
        return kept

    # ------------------------------------------------- NoisyCIFAR's hooks
    def prepare_data(self) -> None:
        pass

    def training_images(self):
        """Not available: image folders are decoded by the loader's workers, never held in memory."""
        raise NotImplementedError(
            f"{type(self).__name__} decodes its files in the loader and holds no image tensor; "
            "callbacks that need the training images (e.g. PatchWhitening) work with NoisyCIFAR10/100 only"
        )

    def _load(self) -> None:
        if getattr(self, "_checked", False):
            return
        if self.hparams.check_files:
            self._train = self._drop_bad_files(self._train, "train")
            for name in ("val", "test"):
                if getattr(self, f"_{name}") is not None:
                    setattr(self, f"_{name}", self._drop_bad_files(getattr(self, f"_{name}"), name))
        self._checked = True

    def _draw_noise(self) -> None:
        if self.hparams.noise_type != "human":
            return super()._draw_noise()
        self.noisy_targets = self._train.given.clone()  # human noise: whatever the files say
        self.noise_selected = self.noisy_targets != self.clean_targets
        known = self._train.clean_known
        self.transition_matrix = noise.empirical_transition_matrix(
            self.clean_targets[known], self.noisy_targets[known], self.num_classes
        )

    def _split(self) -> None:
        """NoisyCIFAR's split, except that a validation split of its own is used when there is one,
        and that the meta set is drawn only from images whose clean label is known."""
        hp, n = self.hparams, len(self._train.paths)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(hp.split_seed))
        if self._val is None:
            n_val = int(round(hp.val_size * n)) if isinstance(hp.val_size, float) else int(hp.val_size)
            if n_val >= n:
                raise ValueError(f"val_size {hp.val_size} leaves no training images out of {n}")
            self.val_indices, pool = perm[:n_val].sort().values, perm[n_val:]
        else:
            self.val_indices, pool = torch.arange(len(self._val.paths)), perm
        self.meta_indices, self.train_indices = self._select_meta(pool)
        if hp.train_subset is not None:
            if not 0 < hp.train_subset <= len(self.train_indices):
                raise ValueError(f"train_subset must be in 1..{len(self.train_indices)}, got {hp.train_subset}")
            self.train_indices = self.train_indices[: hp.train_subset]
        self.train_indices = self.train_indices.sort().values

    def _select_meta(self, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        known = pool[self._train.clean_known[pool]]  # the meta set needs trusted labels
        meta, _ = select_meta(self.clean_targets, known, self.hparams.meta_size, self.num_classes,
                              self.hparams.meta_seed, self.class_names)
        return meta, pool[~torch.isin(pool, meta)]

    # ------------------------------------------------------------- loaders
    def _dataset(self, split: FileSplit, targets: torch.Tensor, clean: torch.Tensor, rows: torch.Tensor):
        return ImageFileDataset(split.paths, targets, clean, rows, self.hparams.image_size)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        ds = self._dataset(self._train, self.noisy_targets, self.clean_targets, self.train_indices)
        train = self._loader(ds, shuffle=True)
        if not self.hparams.meta_size:
            return train
        return CombinedLoader({"train": train, "meta": self.meta_dataloader()}, mode="max_size_cycle")

    def meta_dataloader(self) -> DataLoader:
        ds = self._dataset(self._train, self.clean_targets, self.clean_targets, self.meta_indices)
        bs = min(self.hparams.meta_batch_size or self.hparams.batch_size, len(ds))
        return self._loader(ds, shuffle=True, batch_size=bs)

    def train_eval_dataloader(self) -> DataLoader:
        """The training images in order, not augmented (apply ``eval_transform``), each once over all
        processes: for methods that score every training sample (DivideMix's per-sample losses)."""
        ds = self._dataset(self._train, self.noisy_targets, self.clean_targets, self.train_indices)
        return self._loader(ds, shuffle=False, batch_size=2 * self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        if self._val is None:  # held out of train: noisy labels unless val_clean_labels
            targets = self.clean_targets if self.hparams.val_clean_labels else self.noisy_targets
            ds = self._dataset(self._train, targets, self.clean_targets, self.val_indices)
        else:  # a split of its own: the labels its files give
            targets = self._val.labels if self.hparams.val_clean_labels else self._val.given
            ds = self._dataset(self._val, targets, self._val.labels, self.val_indices)
        return self._loader(ds, shuffle=False, batch_size=2 * self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        split = self._test
        if split is None:
            rank_zero_warn("the image folder has no test split (root/test or test_list): testing on validation")
            return self.val_dataloader()
        ds = self._dataset(split, split.labels, split.labels, torch.arange(len(split.paths)))
        return self._loader(ds, shuffle=False, batch_size=2 * self.hparams.batch_size)
