"""Backbones: output shapes, parameter counts worked out layer by layer, helpers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_modules import backbones as bb


# -------------------------------------------------- parameter counts by hand
def conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight + bias (running stats are buffers)


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def cnn_params(cin=3, n=10, w=1.0) -> int:
    """Co-teaching 9-layer CNN: every 3x3 conv has a bias and is followed by batch norm."""
    c1, c2, c3 = (max(1, round(c * w)) for c in (128, 256, 512))
    chans = [cin, c1, c1, c1, c2, c2, c2, c3, c2, c1]
    return sum(conv(a, b) + bn(b) for a, b in zip(chans, chans[1:])) + linear(c1, n)


def small_vgg_params(cin=3, n=10) -> int:
    chans = [cin, 64, 64, 128, 128, 256, 256]
    return sum(conv(a, b, bias=False) + bn(b) for a, b in zip(chans, chans[1:])) + linear(256, n)


def lenet_params(cin=3, n=10) -> int:
    return conv(cin, 6, 5) + conv(6, 16, 5) + linear(16 * 5 * 5, 120) + linear(120, 84) + linear(84, n)


def convnet3_params(cin=3, n=10) -> int:
    return conv(cin, 32) + conv(32, 64) + conv(64, 128) + linear(128 * 4 * 4, 256) + linear(256, n)


def convnet6_params(cin=3, n=10) -> int:
    total, a = 0, cin
    for b in (32, 64, 128):
        total += conv(a, b) + bn(b) + conv(b, b) + bn(b)
        a = b
    return total + linear(128, n)


def resnet18_params(cin=3, n=10) -> int:
    """CIFAR stem (3x3, no bias) + 4 stages of 2 BasicBlocks; 1x1 projection when the width changes."""
    total = conv(cin, 64, bias=False) + bn(64)
    a = 64
    for b in (64, 128, 256, 512):
        for block in range(2):
            cin_block = a if block == 0 else b
            total += conv(cin_block, b, bias=False) + bn(b) + conv(b, b, bias=False) + bn(b)
            if cin_block != b:
                total += conv(cin_block, b, k=1, bias=False) + bn(b)
        a = b
    return total + linear(512, n)


def mlp_params(cin=3, n=10) -> int:
    return linear(cin * 32 * 32, 512) + linear(512, 256) + linear(256, n)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_hand_formulas_give_the_published_counts():
    # the numbers the issue quotes, reproduced from the per-layer formulas above
    assert cnn_params() == 4_434_570
    assert small_vgg_params() == 1_148_874
    assert lenet_params() == 62_006
    assert resnet18_params() == 11_173_962


@pytest.mark.parametrize(
    "factory, expected",
    [
        (lambda: bb.CNN(), cnn_params()),
        (lambda: bb.CNN(input_channel=1, n_outputs=100), cnn_params(1, 100)),
        (lambda: bb.CNN(width=0.125), cnn_params(w=0.125)),
        (lambda: bb.SmallVGG(), small_vgg_params()),
        (lambda: bb.LeNet(), lenet_params()),
        (lambda: bb.LeNet(input_channel=1, n_outputs=7), lenet_params(1, 7)),
        (lambda: bb.ConvNet3(), convnet3_params()),
        (lambda: bb.ConvNet6(), convnet6_params()),
        (lambda: bb.ResNet(18), resnet18_params()),
        (lambda: bb.ResNet(18, input_channel=1, n_outputs=100), resnet18_params(1, 100)),
        (lambda: bb.MLP(), mlp_params()),
    ],
)
def test_parameter_counts(factory, expected):
    with torch.device("meta"):  # shapes only: skips the (slow) random initialisation
        assert count(factory()) == expected


def test_deeper_resnets_have_the_torchvision_body():
    # torchvision's ImageNet counts minus the 7x7 stem and the 1000-way fc, plus our 3x3 stem and 10-way head
    for depth, imagenet in ((34, 21_797_672), (50, 25_557_032)):
        feat = 512 if depth == 34 else 2048
        expected = imagenet - 7 * 7 * 3 * 64 - linear(feat, 1000) + 3 * 3 * 3 * 64 + linear(feat, 10)
        with torch.device("meta"):
            assert count(bb.ResNet(depth)) == expected, depth
    with pytest.raises(ValueError, match=r"ResNet depth must be one of \[18, 34, 50\], got 101"):
        bb.ResNet(101)


# ------------------------------------------------------------- shapes
ALL = {
    "CNN": lambda c, n: bb.CNN(input_channel=c, n_outputs=n, width=0.125),
    "CNN_top_bn": lambda c, n: bb.CNN(input_channel=c, n_outputs=n, width=0.125, top_bn=True),
    "SmallVGG": lambda c, n: bb.SmallVGG(input_channel=c, n_outputs=n),
    "LeNet": lambda c, n: bb.LeNet(input_channel=c, n_outputs=n),
    "ConvNet3": lambda c, n: bb.ConvNet3(input_channel=c, n_outputs=n),
    "ConvNet6": lambda c, n: bb.ConvNet6(input_channel=c, n_outputs=n),
    "ResNet18": lambda c, n: bb.ResNet(18, input_channel=c, n_outputs=n),
    "ResNet50": lambda c, n: bb.ResNet(50, input_channel=c, n_outputs=n),
    "MLP": lambda c, n: bb.MLP(input_channel=c, n_outputs=n),
}


CASES = [(name, c, n) for name in ALL for c, n in ((3, 10), (1, 7)) if (name, c) != ("ResNet50", 1)]


@pytest.mark.parametrize("name, channels, n_outputs", CASES)
def test_output_shapes_for_three_and_one_channel(name, channels, n_outputs):
    model = ALL[name](channels, n_outputs).eval()
    x = torch.randn(2 if name.startswith("CNN") else 1, channels, 32, 32)  # one image keeps ResNets cheap
    with torch.no_grad():
        feats = model.forward_features(x)
    assert feats.shape == (len(x), model.feature_dim)
    assert model.head(feats).shape == (len(x), n_outputs)
    linear_head = model.head if isinstance(model.head, nn.Linear) else model.head[0]
    assert linear_head.in_features == model.feature_dim and linear_head.out_features == n_outputs
    conv = bb.first_conv(model)
    if name != "MLP":
        assert conv.in_channels == channels
    else:
        assert conv is None


def test_forward_is_head_of_features_and_output_size():
    model = bb.ConvNet6(input_channel=1, n_outputs=4).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.forward_features(x)))
    model.train()
    assert bb.output_size(model, (1, 32, 32)) == 4
    assert model.training  # output_size probes in eval mode and restores the mode


def test_cnn_architecture_matches_coteaching():
    model = bb.CNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128, 256, 256, 256, 512, 256, 128]
    assert [c.padding for c in convs] == [(1, 1)] * 6 + [(0, 0)] * 3
    assert [type(m) for m in model.features].count(nn.MaxPool2d) == 2
    assert [type(m) for m in model.features].count(nn.Dropout2d) == 2
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01}
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10
    top = bb.CNN(top_bn=True)
    assert isinstance(top.head[1], nn.BatchNorm1d) and count(top) == cnn_params() + bn(10)


def test_resnet_has_the_cifar_stem():
    model = bb.ResNet(18)
    assert model.features.conv1.kernel_size == (3, 3) and model.features.conv1.stride == (1, 1)
    assert isinstance(model.features.maxpool, nn.Identity)
    assert bb.first_conv(model) is model.features.conv1
    # spatial size is kept by the stem: a 32x32 image reaches the last stage at 4x4
    trunk = nn.Sequential(*list(model.features.children())[:-2])
    assert trunk(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)


# ----------------------------------------------------------- helpers
def test_reinitialise_changes_parameters_and_copies_are_independent():
    torch.manual_seed(0)
    model = bb.CNN(width=0.125)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # so that batch-norm weights/biases also differ from their initial 1/0
    before = copy.deepcopy(model.state_dict())
    twin = copy.deepcopy(model)
    bb.reinitialise(model)
    bb.reinitialise(twin)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name
    weights = [n for n, p in model.named_parameters() if p.dim() > 1]
    for name in weights:  # random initialisers drew different values for the two copies
        assert not torch.equal(model.state_dict()[name], twin.state_dict()[name]), name
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)


def test_dropout_is_off_in_eval_mode():
    torch.manual_seed(0)
    model = bb.CNN(dropout_rate=0.9, width=0.125)
    no_drop = copy.deepcopy(model)
    for m in no_drop.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    x = torch.randn(4, 3, 32, 32)
    model.eval(), no_drop.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, no_drop(x))
        model.train()
        torch.manual_seed(1)
        c = model(x)
        torch.manual_seed(2)
        d = model(x)
    assert not torch.allclose(c, d)  # dropout does act in training mode
