"""Backbones: plain ``nn.Module``s, each ``features`` (encoder) followed by ``head`` (linear).

The split lets SimCLR train the encoder alone, lets fine-tuning load every
tensor but the head, and gives callbacks one place to find the first conv.
All take ``input_channel`` and ``n_outputs`` (cleanlab's names).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Mapping

import torch
import torch.nn as nn
import torchvision


class Backbone(nn.Module):
    """``forward(x) = head(features(x))``; ``feature_dim`` is the head's input size.

    Every subclass records the arguments it was built with (``init_args``), so that a method can
    save ``spec(backbone)`` in its hyper-parameters and ``load_from_checkpoint`` can rebuild it.
    """

    features: nn.Module
    head: nn.Module
    feature_dim: int
    init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            bound = inspect.signature(init).bind(self, *args, **kw)
            bound.apply_defaults()
            init(self, *args, **kw)
            # the outermost __init__ returns last, so its arguments are the ones kept
            params = inspect.signature(init).parameters
            args = {}
            for k, v in list(bound.arguments.items())[1:]:
                if params[k].kind is inspect.Parameter.VAR_KEYWORD:
                    args.update(v)
                elif params[k].kind is not inspect.Parameter.VAR_POSITIONAL:
                    args[k] = v
            self.init_args = args

        cls.__init__ = recording_init

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def spec(backbone: nn.Module) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a ``Backbone`` (what a YAML config says); None for other modules."""
    init_args = getattr(backbone, "init_args", None)
    if not isinstance(backbone, Backbone) or init_args is None:
        return None
    cls = type(backbone)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(init_args)}


def from_spec(backbone: nn.Module | Mapping[str, Any]) -> nn.Module:
    """A module as it is, or one built from its ``spec`` (as saved in a checkpoint's hyper-parameters)."""
    if isinstance(backbone, nn.Module):
        return backbone
    if not isinstance(backbone, Mapping) or "class_path" not in backbone:
        raise TypeError(f"backbone must be an nn.Module or a {{class_path, init_args}} mapping, got {backbone!r}")
    module_name, _, name = backbone["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    return cls(**dict(backbone.get("init_args") or {}))


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _conv_bn_lrelu(cin: int, cout: int, padding: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=padding), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01)]


class CNN(Backbone):
    """The 9-layer CNN of co-teaching (Han et al. 2018), with cleanlab's signature.

    128-128-128, max-pool + dropout, 256-256-256, max-pool + dropout,
    512-256-128 (3x3, unpadded), global average pool, linear; batch norm and
    leaky ReLU (slope 0.01) after every conv. ``width`` scales every channel
    count (1.0 = the paper's network) for CPU-scale runs. Unlike the reference
    code, dropout is off in eval mode (the reference calls ``F.dropout2d``
    without ``training=``, so it also drops at test time).
    """

    def __init__(
        self, input_channel: int = 3, n_outputs: int = 10, dropout_rate: float = 0.25, top_bn: bool = False,
        width: float = 1.0,
    ):
        super().__init__()
        c128, c256, c512 = _scaled(128, width), _scaled(256, width), _scaled(512, width)
        self.features = nn.Sequential(
            *_conv_bn_lrelu(input_channel, c128, 1), *_conv_bn_lrelu(c128, c128, 1), *_conv_bn_lrelu(c128, c128, 1),
            nn.MaxPool2d(2, 2), nn.Dropout2d(dropout_rate),
            *_conv_bn_lrelu(c128, c256, 1), *_conv_bn_lrelu(c256, c256, 1), *_conv_bn_lrelu(c256, c256, 1),
            nn.MaxPool2d(2, 2), nn.Dropout2d(dropout_rate),
            *_conv_bn_lrelu(c256, c512, 0), *_conv_bn_lrelu(c512, c256, 0), *_conv_bn_lrelu(c256, c128, 0),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = c128
        linear = nn.Linear(c128, n_outputs)
        self.head = nn.Sequential(linear, nn.BatchNorm1d(n_outputs)) if top_bn else linear


class SmallVGG(Backbone):
    """VGG-style 64-64 / 128-128 / 256-256 conv pairs with batch norm, max-pool after each
    pair, global average pool, linear: about 1.15 M parameters (study companion)."""

    def __init__(self, input_channel: int = 3, n_outputs: int = 10, dropout_rate: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = input_channel
        for cout in (64, 128, 256):
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout_rate)]
        self.features = nn.Sequential(*layers)
        self.feature_dim = 256
        self.head = nn.Linear(256, n_outputs)


class LeNet(Backbone):
    """Tutorial net 1: two 5x5 convs (6, 16) with max-pool, then 120-84 fully connected (LeNet-5 style)."""

    def __init__(self, input_channel: int = 3, n_outputs: int = 10, image_size: int = 32):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(input_channel, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        )
        self.feature_dim = 84
        self.head = nn.Linear(84, n_outputs)


class ConvNet3(Backbone):
    """Tutorial net 2: three 3x3 convs (32, 64, 128) each with max-pool, dropout, 256-unit dense layer."""

    def __init__(self, input_channel: int = 3, n_outputs: int = 10, dropout_rate: float = 0.25, image_size: int = 32):
        super().__init__()
        side = image_size // 8
        self.features = nn.Sequential(
            nn.Conv2d(input_channel, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout_rate), nn.Linear(128 * side * side, 256), nn.ReLU(),
            nn.Dropout(dropout_rate),
        )
        self.feature_dim = 256
        self.head = nn.Linear(256, n_outputs)


class ConvNet6(Backbone):
    """Tutorial net 3: six 3x3 convs in pairs (32, 64, 128) with batch norm, max-pool and dropout per pair."""

    def __init__(self, input_channel: int = 3, n_outputs: int = 10, dropout_rate: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        cin = input_channel
        for cout in (32, 64, 128):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2), nn.Dropout(dropout_rate),
            ]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.feature_dim = 128
        self.head = nn.Linear(128, n_outputs)


class ResNet(Backbone):
    """torchvision ResNet-18/34/50 with the CIFAR stem: 3x3 stride-1 first conv, no max-pool."""

    DEPTHS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}

    def __init__(self, depth: int = 18, input_channel: int = 3, n_outputs: int = 10):
        super().__init__()
        if depth not in self.DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(self.DEPTHS)}, got {depth}")
        net = self.DEPTHS[depth](weights=None)
        net.conv1 = nn.Conv2d(input_channel, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.features = net
        self.head = nn.Linear(self.feature_dim, n_outputs)


class MLP(Backbone):
    """Fully connected net on raw pixels (flattened), ReLU between hidden layers."""

    def __init__(
        self, input_channel: int = 3, n_outputs: int = 10, image_size: int = 32,
        hidden: tuple[int, ...] = (512, 256), dropout_rate: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        cin = input_channel * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(cin, h), nn.ReLU(), nn.Dropout(dropout_rate)]
            cin = h
        self.features = nn.Sequential(*layers)
        self.feature_dim = cin
        self.head = nn.Linear(cin, n_outputs)


class Scale(nn.Module):
    """Multiply by a constant (airbench's output scaling of the logits)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _airbench_conv(cin: int, cout: int) -> nn.Conv2d:
    """3x3 'same' conv without bias whose first ``cin`` output channels start as the identity (Dirac)."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])
    return conv


def _airbench_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    """Batch norm with a fixed scale of 1 (only the bias learns), eps 1e-12, as in airbench."""
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    norm.weight.requires_grad_(False)
    return norm


class AirbenchGroup(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, cin: int, cout: int, bn_momentum: float):
        super().__init__()
        self.conv1, self.pool = _airbench_conv(cin, cout), nn.MaxPool2d(2)
        self.norm1, self.conv2 = _airbench_norm(cout, bn_momentum), _airbench_conv(cout, cout)
        self.norm2, self.activ = _airbench_norm(cout, bn_momentum), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(Backbone):
    """The airbench94 CIFAR network (Keller Jordan, github.com/KellerJordan/cifar10-airbench,
    ``legacy/airbench94.py``; 94% on CIFAR-10 in about 10 epochs), written from its description.

    A 2x2 patch conv with ``2 * C * 4`` channels (24 for RGB) meant to be initialised by patch
    whitening (``whitening.init_patch_whitening``; its weight is frozen, its bias trains), GELU, three
    groups of widths 64/256/256, max-pool 3, a bias-free linear head scaled by 1/9. About 2.0 M
    parameters. Batch norms have a fixed unit scale and PyTorch momentum ``bn_momentum`` (airbench's
    0.6 "keep" rate is PyTorch's 0.4). ``width`` scales the group widths for smaller runs.
    """

    def __init__(
        self, input_channel: int = 3, n_outputs: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
        bn_momentum: float = 0.4, logit_scale: float = 1 / 9, width: float = 1.0,
    ):
        super().__init__()
        w1, w2, w3 = (_scaled(c, width) for c in widths)
        whiten = nn.Conv2d(input_channel, 2 * input_channel * 4, kernel_size=2, padding=0, bias=True)
        whiten.weight.requires_grad_(False)
        nn.init.zeros_(whiten.bias)
        self.features = nn.Sequential(
            whiten, nn.GELU(),
            AirbenchGroup(whiten.out_channels, w1, bn_momentum),
            AirbenchGroup(w1, w2, bn_momentum),
            AirbenchGroup(w2, w3, bn_momentum),
            nn.MaxPool2d(3), nn.Flatten(),
        )
        self.feature_dim = w3
        self.head = nn.Sequential(nn.Linear(w3, n_outputs, bias=False), Scale(logit_scale))


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    """The first ``nn.Conv2d`` in registration order (what filter visualisation shows)."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def reinitialise(model: nn.Module) -> nn.Module:
    """Reset every parameter with its layer's own initialiser (a fresh, independent network)."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    return model


def output_size(model: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Number of outputs of ``model`` for one image of ``image_shape`` (probed in eval mode; every
    sub-module gets its own mode back, so a frozen encoder kept in eval mode stays there)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            out = model(torch.zeros(2, *image_shape, device=p.device, dtype=p.dtype))
    finally:
        for m, mode in modes:
            m.training = mode
    return int(out.shape[-1])


__all__ = ["Backbone", "CNN", "SmallVGG", "LeNet", "ConvNet3", "ConvNet6", "ResNet", "MLP", "AirbenchNet",
           "PreActResNet18"]


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice. As in DivideMix's ``PreResNet.py``,
    the identity shortcut too carries the activated input ``relu(bn1(x))``, not ``x``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else out  # as the reference: not ``x``
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet18(Backbone):
    """The PreAct ResNet-18 of DivideMix (``PreResNet.py`` of github.com/LiJunnan1992/DivideMix): 3x3
    stem conv + BN + ReLU, four stages of two pre-activation blocks (64-128-256-512, stride 1-2-2-2),
    global average pool, linear; about 11.2 M parameters. ``width`` scales the channels (1.0 = paper)."""

    def __init__(self, input_channel: int = 3, n_outputs: int = 10, width: float = 1.0):
        super().__init__()
        widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
        layers: list[nn.Module] = [nn.Conv2d(input_channel, widths[0], 3, padding=1, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU()]
        cin = widths[0]
        for i, cout in enumerate(widths):
            layers += [PreActBlock(cin, cout, 1 if i == 0 else 2), PreActBlock(cout, cout)]
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.feature_dim = cin
        self.head = nn.Linear(cin, n_outputs)
