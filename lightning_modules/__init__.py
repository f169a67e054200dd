"""LightningModules (training methods) and the backbones they train."""

from .classifier import Classifier
from .coteaching import CoTeaching
from .dividemix import DivideMix
from .meta_weight_net import MetaWeightNet
from .simclr import SimCLR

__all__ = ["Classifier", "CoTeaching", "DivideMix", "MetaWeightNet", "SimCLR"]
