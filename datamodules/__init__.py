"""LightningDataModules that serve images with controlled label noise."""

from .image_folder import NoisyImageFolder
from .noisy_cifar import NoisyCIFAR10, NoisyCIFAR100
from .noisy_dataset import NoisyDataModule

__all__ = ["NoisyDataModule", "NoisyImageFolder", "NoisyCIFAR10", "NoisyCIFAR100"]
