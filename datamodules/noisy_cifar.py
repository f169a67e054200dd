"""NoisyCIFAR10 / NoisyCIFAR100: CIFAR with controlled, saved label noise.

All the noise, split and loader logic is :class:`~datamodules.noisy_dataset.NoisyDataModule`'s;
this module only reads the official python archives and the CIFAR-N human label files.
"""

from __future__ import annotations

import torch

from . import augment, cifar_source, noise
from .human_labels import HUMAN_LABEL_KEYS, load_human_labels
from .noisy_dataset import NOISY_LABELS_FILE, NoisyDataModule, save_noisy_labels

__all__ = ["NOISY_LABELS_FILE", "NoisyCIFAR", "NoisyCIFAR10", "NoisyCIFAR100", "save_noisy_labels"]


class NoisyCIFAR(NoisyDataModule):
    """CIFAR from its official python archive; use :class:`NoisyCIFAR10` or :class:`NoisyCIFAR100`.

    Args:
        data_dir: folder holding (or receiving) the official python archive.
        download: fetch the archive (md5-checked) when it is not in ``data_dir``.
        human_labels: path to a CIFAR-N label file (.pt as published, or .npz), for ``noise_type: human``.
        human_label_set: which human labels (CIFAR-10N: aggre, worst, random1..3; CIFAR-100N: noisy).
        **kwargs: the noise, split, meta-set, fold and loader settings of
            :class:`~datamodules.noisy_dataset.NoisyDataModule` (``batch_size``, ``val_size``,
            ``noise_type``, ``noise_rate``, ``noise_seed``, ``meta_size``, ``resident_on_device``, ...).
    """

    spec: cifar_source.CifarSpec
    image_shape = (3, 32, 32)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        human_labels: str | None = None,
        human_label_set: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.hparams.noise_type == "human":
            if not human_labels or not human_label_set:
                raise ValueError("noise_type 'human' needs both human_labels (a CIFAR-N file) and human_label_set")
            allowed = HUMAN_LABEL_KEYS.get(self.dataset_name, {})
            if human_label_set not in allowed:
                raise ValueError(
                    f"unknown human_label_set {human_label_set!r} for {self.dataset_name}; "
                    f"allowed: {', '.join(allowed)}"
                )

    @property
    def dataset_name(self) -> str:
        return self.spec.name

    def prepare_data(self) -> None:
        cifar_source.prepare(self.spec, self.hparams.data_dir, self.hparams.download)

    def read_splits(self) -> tuple[cifar_source.CifarSplit, None, cifar_source.CifarSplit]:
        folder = cifar_source.prepare(self.spec, self.hparams.data_dir, download=False)
        self.class_names = cifar_source.read_class_names(self.spec, folder)
        train = cifar_source.read_split(self.spec, folder, train=True)
        test = cifar_source.read_split(self.spec, folder, train=False)
        labels = torch.cat([train.labels, test.labels])
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise RuntimeError(f"{folder} has labels outside 0..{self.num_classes - 1}: not {self.spec.name}")
        return train, None, test

    def human_noisy_labels(self) -> torch.Tensor:
        hp = self.hparams
        return load_human_labels(hp.human_labels, self.dataset_name, hp.human_label_set, self.clean_targets,
                                 self.num_classes)


class NoisyCIFAR10(NoisyCIFAR):
    __doc__ = NoisyCIFAR.__doc__
    spec, num_classes = cifar_source.CIFAR10, 10
    mean, std = augment.CIFAR10_MEAN, augment.CIFAR10_STD

    def class_map(self) -> dict[int, int]:
        return dict(noise.CIFAR10_ASYMMETRIC_MAP)


class NoisyCIFAR100(NoisyCIFAR):
    __doc__ = NoisyCIFAR.__doc__
    spec, num_classes = cifar_source.CIFAR100, 100
    mean, std = augment.CIFAR100_MEAN, augment.CIFAR100_STD

    def class_map(self) -> dict[int, int]:
        """Next fine class within the same superclass, from the archive's coarse labels."""
        self._read()
        fine, coarse = self._train.labels, self._train.coarse_labels
        fine_to_coarse = torch.zeros(self.num_classes, dtype=torch.long)
        fine_to_coarse[fine] = coarse
        return noise.superclass_successor_map(fine_to_coarse.tolist())
