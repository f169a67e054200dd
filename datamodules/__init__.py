"""LightningDataModules that serve images with controlled label noise."""

from .noisy_cifar import NoisyCIFAR10, NoisyCIFAR100

__all__ = ["NoisyCIFAR10", "NoisyCIFAR100"]
