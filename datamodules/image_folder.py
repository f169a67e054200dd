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

The noise, split, meta-set, saving and resuming logic is the shared
:class:`~datamodules.noisy_dataset.NoisyDataModule`'s, so every attribute (``noisy_targets``, ``clean_targets``,
``noise_selected``, ``transition_matrix``, ``actual_noise_rate``,
``train_indices``, ``val_indices``, ``meta_indices``, ``clean_known``, ``class_names``,
``num_classes``, ``image_shape``) and ``noisy_labels.npz`` mean the same thing as for CIFAR.
When the data has its own validation split, ``val_indices`` index that split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from . import augment
from .contracts import CLEAN_TARGET, IMAGE, INDEX, TARGET, Batch
from .noisy_dataset import NoisyDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


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

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return {
            IMAGE: torch.stack([load_image(self.paths[r], self.image_size) for r in rows.tolist()]),
            TARGET: self.targets[rows],
            CLEAN_TARGET: self.clean_targets[rows],
            INDEX: rows,
        }

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


# ------------------------------------------------------------------- datamodule
class NoisyImageFolder(NoisyDataModule):
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
        asymmetric_map: class map of ``asymmetric`` noise, by name or id (``{"cat": "dog"}``).
        mean, std: normalisation (default: ImageNet statistics).
        crop_padding: pixels of the ``crop_flip`` augmentation's crop (default ``image_size // 8``,
            the 4 px of CIFAR's 32).
        **kwargs: the noise, split, meta-set and loader settings of
            :class:`~datamodules.noisy_dataset.NoisyDataModule` (``noise_type`` -- ``clean`` or ``human``
            take the files' labels as they are --, ``noise_rate``, ``noise_seed``, ``split_seed``,
            ``train_subset``, ``augmentation``, ``meta_size``, ...).
    """

    dataset_name = "image_folder"
    images_in_memory = False

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
        asymmetric_map: Mapping[str, str] | Mapping[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_padding: int | None = None,
        **kwargs,
    ):
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)}, {list(std)}")
        if (val_list or test_list or clean_list) and not train_list:
            raise ValueError("val_list / test_list / clean_list need a train_list (file-list layout)")
        self.crop_padding = image_size // 8 if crop_padding is None else crop_padding
        if not 0 <= self.crop_padding < image_size:
            raise ValueError(f"crop_padding must be in 0..{image_size - 1}, got {self.crop_padding}")
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_shape = (3, image_size, image_size)
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_size=val_size, **kwargs)
        self.bad_files: list[tuple[str, str]] = []
        self._listed = self._index()  # split name -> files and labels, checked in setup
        self._asymmetric_map = self._class_ids(asymmetric_map) if asymmetric_map else None
        if self.hparams.noise_type == "asymmetric" and not asymmetric_map:
            raise ValueError("asymmetric noise on an image folder needs asymmetric_map ({source class: target class})")

    def make_train_transform(self, augmentation: str) -> torch.nn.Module:
        if augmentation == "crop_flip":
            return augment.CropFlip(self.mean, self.std, padding=self.crop_padding)
        return super().make_train_transform(augmentation)

    # ------------------------------------------------------------ indexing
    def class_map(self) -> dict[int, int] | None:
        return self._asymmetric_map

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

    def _index(self) -> dict[str, FileSplit]:
        """Find the files and labels of every split (no decoding): cheap, so done in ``__init__``."""
        hp, root = self.hparams, Path(self.hparams.root).expanduser()
        if hp.train_list:
            return self._index_lists(root)
        self.class_names, paths, labels = scan_class_folders(root / "train")
        if hp.num_classes is not None and hp.num_classes != len(self.class_names):
            found = len(self.class_names)
            raise ValueError(f"num_classes is {hp.num_classes} but {root / 'train'} has {found} class folders")
        self.num_classes = len(self.class_names)
        listed = {"train": self._split_from(paths, labels)}
        for name in ("val", "test"):
            if (root / name).is_dir():
                classes, split_paths, split_labels = scan_class_folders(root / name)
                if classes != self.class_names:
                    missing, extra = set(self.class_names) - set(classes), set(classes) - set(self.class_names)
                    raise ValueError(
                        f"classes of {root / name} differ from {root / 'train'}: missing {sorted(missing)}, "
                        f"extra {sorted(extra)}"
                    )
                listed[name] = self._split_from(split_paths, split_labels)
        return listed

    def _index_lists(self, root: Path) -> dict[str, FileSplit]:
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
        return {name: self._split_from(paths, labels, clean) for name, (paths, labels) in lists.items()}

    @staticmethod
    def _split_from(paths: list[str], labels: list[int], clean: Mapping[str, int] | None = None) -> FileSplit:
        given = torch.tensor(labels, dtype=torch.long)
        known = torch.tensor([p in clean for p in paths]) if clean else torch.ones(len(paths), dtype=torch.bool)
        true = torch.tensor([clean.get(path, label) for path, label in zip(paths, labels)]) if clean else given.clone()
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

    # ------------------------------------------------------ the base's hooks
    def read_splits(self) -> tuple[FileSplit, FileSplit | None, FileSplit | None]:
        listed = self._listed
        if self.hparams.check_files:
            listed = {name: self._drop_bad_files(split, name) for name, split in listed.items()}
        return listed["train"], listed.get("val"), listed.get("test")

    def known_clean_labels(self) -> torch.Tensor:
        return self._train.clean_known

    def human_noisy_labels(self) -> torch.Tensor:
        return self._train.given.clone()  # human noise: whatever the files say

    def make_dataset(self, split: FileSplit, targets: torch.Tensor, clean: torch.Tensor, rows: torch.Tensor) -> Dataset:
        return ImageFileDataset(split.paths, targets, clean, rows, self.hparams.image_size)

    @property
    def no_test_split_warning(self) -> str:
        return "the image folder has no test split (root/test or test_list)"
