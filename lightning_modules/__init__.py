"""LightningModules (training methods) and the backbones they train."""

from .classifier import Classifier

__all__ = ["Classifier"]
