"""SimCLR: loss, batched two-view augmentation, kNN monitor, fine-tuning from the encoder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from lightly.transforms import SimCLRTransform
from lightly.utils.benchmarking import knn_predict as lightly_knn_predict
from torchvision import transforms as T

from callbacks.knn import KNNMonitor, knn_predict
from datamodules import augment
from datamodules import simclr_augment as sa
from datamodules.batches import IndexedTensorDataset, keep_batch
from lightning_modules import Classifier, SimCLR
from lightning_modules.backbones import CNN, ConvNet6, ResNet
from lightning_modules.pretrained import export_encoder, load_backbone_weights
from lightning_modules.pretrained import main as pretrained_main

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- NT-Xent
def reference_ntxent(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Chen et al. 2020, eq. 1, written out: each of 2N views against the other 2N - 1."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = len(a)
    sim = z @ z.T / t
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        total += -(sim[i, pos] - torch.logsumexp(sim[i, others], 0))
    return total / (2 * n)


@pytest.mark.parametrize("t", [0.5, 0.1])
def test_ntxent_matches_the_written_out_loss_and_prefers_identical_views(t):
    """The module's criterion (lightly's NTXentLoss) against eq. 1 written out, at its temperature."""
    torch.manual_seed(0)
    model = SimCLR(ConvNet6(), temperature=t)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    ours = model.criterion(a, b)
    assert torch.allclose(ours, reference_ntxent(a, b, t), atol=1e-5)
    other_t = 0.3
    assert not torch.allclose(ours, reference_ntxent(a, b, other_t), atol=1e-3)  # the temperature is used
    identical = model.criterion(a, a.clone())
    assert torch.allclose(identical, reference_ntxent(a, a, t), atol=1e-5)
    assert identical < ours - 0.5


def test_simclr_rejects_bad_arguments_and_batches_without_views():
    with pytest.raises(ValueError, match="temperature"):
        SimCLR(ConvNet6(), temperature=0.0)
    with pytest.raises(ValueError, match="features"):
        SimCLR(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="projection"):
        SimCLR(ConvNet6(), projection_dim=0)
    with pytest.raises(KeyError, match="augmentation to 'simclr'"):
        SimCLR(ConvNet6()).training_step({"image": torch.zeros(2, 3, 32, 32)}, 0)


def test_training_step_never_reads_labels():
    torch.manual_seed(0)
    model = SimCLR(ConvNet6(), gather_distributed=False)
    model.log = lambda *a, **k: None
    views = {"view1": torch.randn(6, 3, 32, 32), "view2": torch.randn(6, 3, 32, 32)}
    torch.manual_seed(1)
    without = model.training_step(dict(views), 0)  # no target / clean_target keys at all
    torch.manual_seed(1)
    with_labels = model.training_step({**views, "target": torch.arange(6), "clean_target": torch.zeros(6)}, 0)
    assert torch.equal(without, with_labels)


# ----------------------------------------------------------------------------- kNN
def test_knn_weighted_vote_by_hand():
    # query (1, 0); bank: a=(1,0) class 0, b=(0.8,0.6) class 1, c=(0.6,0.8) class 1, d=(-1,0) class 2
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[1.0, 0.0]])
    scores = knn_predict(q, bank, labels, num_classes=3, k=3, temperature=0.1)
    expected = torch.tensor([[math.exp(10), math.exp(8) + math.exp(6), 0.0]])  # d is not among the 3 nearest
    assert torch.allclose(scores, expected, rtol=1e-5)
    assert scores.argmax(1).item() == 0  # the close neighbour outweighs the majority
    hot = knn_predict(q, bank, labels, num_classes=3, k=3, temperature=1.0)
    assert torch.allclose(hot, torch.tensor([[math.e, math.exp(0.8) + math.exp(0.6), 0.0]]), rtol=1e-5)
    assert hot.argmax(1).item() == 1  # at temperature 1 the majority wins
    # k larger than the bank: every row votes
    assert torch.allclose(knn_predict(q, bank, labels, 3, k=200, temperature=1.0)[0, 2], torch.tensor(math.exp(-1)))


def test_knn_matches_lightly():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(300, 8, generator=g), dim=1)
    labels = torch.randint(0, 5, (300,), generator=g)
    q = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    ours = knn_predict(q, bank, labels, 5, k=50, temperature=0.1).argmax(1)
    theirs = lightly_knn_predict(q, bank.T.contiguous(), labels, 5, knn_k=50, knn_t=0.1)[:, 0]
    assert torch.equal(ours, theirs)


class _MeanColour(pl.LightningModule):
    """Encoder = mean colour of the image: the kNN result can be worked out by hand."""

    def __init__(self):
        super().__init__()
        self.backbone = SimpleNamespace(features=lambda x: x.mean(dim=(2, 3)))
        self.dummy = torch.nn.Parameter(torch.zeros(1))


def _solid(colours: list[tuple[int, int, int]]) -> torch.Tensor:
    return torch.tensor(colours, dtype=torch.uint8)[:, :, None, None].expand(-1, 3, 32, 32).contiguous()


def test_knn_monitor_accuracy_on_hand_made_images():
    # features = direction of the mean colour. Bank: 3 reds, 3 greens; the noisy labels call red3 class 1
    bank = _solid([(250, 0, 0), (240, 10, 0), (230, 0, 10), (0, 250, 0), (0, 240, 10), (10, 230, 0)])
    noisy = torch.tensor([0, 0, 1, 1, 1, 1])
    clean = torch.tensor([0, 0, 0, 1, 1, 1])
    # queries and their nearest bank image (cosine similarity of the colour directions, worked out by hand):
    # q1 (200,5,5): red2 0.999551 > red3 0.999526 > red1 0.99938     label 0
    # q2 (255,20,0): red2 0.99932 > red1 0.99694                      label 0
    # q3 (5,200,5): a green                                           label 1
    # q4 (220,0,0): red1 1.0                                          label 1 (wrong by construction)
    # q5 (230,0,12): red3 0.99996 > red2 0.99777                      label 0
    test = _solid([(200, 5, 5), (255, 20, 0), (5, 200, 5), (220, 0, 0), (230, 0, 12)])
    test_y = torch.tensor([0, 0, 1, 1, 0])
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=keep_batch)  # noqa: E731
    dm = SimpleNamespace(
        num_classes=2, eval_transform=augment.Normalize((0, 0, 0), (1, 1, 1)),
        train_dataloader=lambda: loader(IndexedTensorDataset(bank, noisy, clean)),
        test_dataloader=lambda: loader(IndexedTensorDataset(test, test_y, test_y)),
    )
    trainer = SimpleNamespace(datamodule=dm)
    module = _MeanColour()
    # noisy bank, k=1: q1 red2 -> 0 right, q2 red2 -> 0 right, q3 right, q4 red1 -> 0 wrong, q5 red3 -> 1 wrong
    assert KNNMonitor(k=1, bank_labels="target").accuracy(trainer, module) == pytest.approx(3 / 5)
    # clean bank, k=1: q5 red3 -> 0 right now; q4 still wrong
    assert KNNMonitor(k=1, bank_labels="clean_target").accuracy(trainer, module) == pytest.approx(4 / 5)
    # clean bank, k=3, t=0.1: every reddish query sees the 3 reds (all class 0), the greenish one the greens
    monitor = KNNMonitor(k=3, temperature=0.1, bank_labels="clean_target")
    assert monitor.accuracy(trainer, module) == pytest.approx(4 / 5)
    assert module.training  # mode restored


def test_knn_monitor_rejects_bad_arguments():
    for kwargs, word in (({"k": 0}, "k"), ({"temperature": 0}, "temperature"), ({"every_n_epochs": 0}, "every_n"),
                         ({"bank_labels": "noisy"}, "bank_labels")):
        with pytest.raises(ValueError, match=word):
            KNNMonitor(**kwargs)


# ----------------------------------------------------------------------------- augmentation
def _lightly_view_transforms() -> dict:
    """The pieces of lightly's CIFAR SimCLR view transform (lightly's cifar10 benchmark settings)."""
    view = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0).transforms[0].transform.transforms
    out = {}
    for t in view:  # torchvision v1 or v2 classes, depending on the installed versions
        name = type(t).__name__
        if name == "RandomApply" and type(t.transforms[0]).__name__ == "ColorJitter":
            out["jitter_p"], out["jitter"] = t.p, t.transforms[0]
        else:
            out[name] = t
    return out


def test_parameter_ranges_equal_lightly_simclr_transform():
    ref, cfg = _lightly_view_transforms(), sa.SimCLRAugmentConfig()
    crop = ref["RandomResizedCrop"]
    assert tuple(crop.size) == (32, 32)
    assert crop.scale == pytest.approx(cfg.scale) and crop.ratio == pytest.approx(cfg.ratio)
    assert ref["RandomHorizontalFlip"].p == cfg.hflip_prob
    assert ref["RandomGrayscale"].p == cfg.grey_prob
    assert ref["jitter_p"] == cfg.jitter_prob
    j = ref["jitter"]
    assert j.brightness == pytest.approx((1 - cfg.brightness, 1 + cfg.brightness))
    assert j.contrast == pytest.approx((1 - cfg.contrast, 1 + cfg.contrast))
    assert j.saturation == pytest.approx((1 - cfg.saturation, 1 + cfg.saturation))
    assert j.hue == pytest.approx((-cfg.hue, cfg.hue))
    assert "GaussianBlur" not in ref or ref["GaussianBlur"].prob == 0.0


def test_crop_distribution_matches_torchvision_get_params():
    n = 20000
    torch.manual_seed(0)
    crop = _lightly_view_transforms()["RandomResizedCrop"]
    img = torch.zeros(3, 32, 32)
    tv = torch.tensor([T.RandomResizedCrop.get_params(img, list(crop.scale), list(crop.ratio)) for _ in range(n)],
                      dtype=torch.float)
    ours = sa.sample_crop_boxes(n, 32, 32, crop.scale, crop.ratio, generator=torch.Generator().manual_seed(1))
    for boxes in (tv, ours):  # top, left, h, w
        assert (boxes[:, 2] >= 1).all() and (boxes[:, 0] + boxes[:, 2] <= 32).all()
        assert (boxes[:, 3] >= 1).all() and (boxes[:, 1] + boxes[:, 3] <= 32).all()
    area = lambda b: b[:, 2] * b[:, 3] / 1024  # noqa: E731
    log_ratio = lambda b: torch.log(b[:, 3] / b[:, 2])  # noqa: E731
    for stat in (area, log_ratio, lambda b: b[:, 0], lambda b: b[:, 1]):
        a, b = stat(tv), stat(ours)
        se = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * se
        assert abs(a.std() - b.std()) < 0.05 * a.std()
    # full-size crops (where the fallback lands too) are as frequent as in torchvision
    full = lambda b: ((b[:, 2] == 32) & (b[:, 3] == 32)).float().mean()  # noqa: E731
    assert abs(full(tv) - full(ours)) < 0.01


def test_fallback_is_torchvision_central_crop():
    # a scale range that can never fit: every try fails
    boxes = sa.sample_crop_boxes(5, 32, 32, (1.0, 1.0), (2.0, 3.0))
    crop = T.RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(2.0, 3.0))
    tv = crop.get_params(torch.zeros(3, 32, 32), crop.scale, crop.ratio)
    assert boxes.tolist() == [list(map(float, tv))] * 5


def test_flip_jitter_grey_rates_match_config():
    n = 40000
    p = sa.sample_view_params(n, 32, 32, sa.SimCLRAugmentConfig(), generator=torch.Generator().manual_seed(0))
    se = lambda q: 4 * math.sqrt(q * (1 - q) / n)  # noqa: E731
    assert abs(p.flip.float().mean() - 0.5) < se(0.5)
    assert abs(p.jitter.float().mean() - 0.8) < se(0.8)
    assert abs(p.grey.float().mean() - 0.2) < se(0.2)
    assert p.factors[:, :3].min() >= 0.6 and p.factors[:, :3].max() <= 1.4
    assert p.factors[:, 3].abs().max() <= 0.1
    assert (p.order.sort(1).values == torch.arange(4)).all()  # permutations
    first_op = torch.bincount(p.order[:, 0], minlength=4).float() / n
    assert (first_op - 0.25).abs().max() < se(0.25)


def test_grey_rate_measured_on_output_images():
    n = 3000
    torch.manual_seed(0)
    colourful = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)  # small images: the rate does not depend on size
    colourful[:, 0], colourful[:, 1], colourful[:, 2] = 200, 60, 20
    out = sa.SimCLRAugment((0, 0, 0), (1, 1, 1)).view(colourful)
    grey = ((out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-6) & ((out[:, 1] - out[:, 2]).abs().amax((1, 2)) < 1e-6)
    assert abs(grey.float().mean() - 0.2) < 4 * math.sqrt(0.16 / n)


def test_resized_crop_and_flip_are_exact():
    x = torch.rand(2, 3, 32, 32)
    full = torch.tensor([[0.0, 0, 32, 32]] * 2)
    no, yes = torch.tensor([False, False]), torch.tensor([True, True])
    assert torch.allclose(sa.resized_crop_flip(x, full, no), x, atol=1e-6)
    assert torch.allclose(sa.resized_crop_flip(x, full, yes), x.flip(3), atol=1e-6)
    box = torch.tensor([[8.0, 4, 16, 16], [0, 16, 16, 16]])
    expected = torch.stack([
        F.interpolate(x[0:1, :, 8:24, 4:20], size=32, mode="bilinear", align_corners=False)[0],
        F.interpolate(x[1:2, :, 0:16, 16:32], size=32, mode="bilinear", align_corners=False)[0].flip(2),
    ])
    assert torch.allclose(sa.resized_crop_flip(x, box, torch.tensor([False, True])), expected, atol=1e-5)


@pytest.mark.parametrize(
    "ours,theirs,factors",
    [
        (sa.adjust_brightness, TF.adjust_brightness, (0.6, 1.0, 1.4)),
        (sa.adjust_contrast, TF.adjust_contrast, (0.6, 1.0, 1.4)),
        (sa.adjust_saturation, TF.adjust_saturation, (0.6, 1.0, 1.4)),
        (sa.adjust_hue, TF.adjust_hue, (-0.1, 0.0, 0.07)),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, factors):
    x = torch.rand(3, 3, 32, 32)
    x[1, :, :4] = 0.5  # some grey pixels (hue undefined)
    got = ours(x, torch.tensor(factors))
    expected = torch.stack([theirs(x[i], f) for i, f in enumerate(factors)])
    assert torch.allclose(got, expected, atol=1e-5)


def test_color_jitter_applies_each_sample_its_own_order():
    x = torch.rand(6, 3, 32, 32)
    p = sa.sample_view_params(6, 32, 32, sa.SimCLRAugmentConfig(jitter_prob=0.5),
                              generator=torch.Generator().manual_seed(3))
    got = sa.color_jitter(x, p.jitter, p.order, p.factors)
    tv_ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(6):
        y = x[i]
        if p.jitter[i]:
            for op in p.order[i].tolist():
                y = tv_ops[op](y, float(p.factors[i, op]))
        assert torch.allclose(got[i], y, atol=1e-5), i
    assert p.jitter.any() and not p.jitter.all()


def test_simclr_augment_through_the_datamodule(fake_cifar10_dir):
    from datamodules import NoisyCIFAR10

    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=50, batch_size=32, augmentation="simclr")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer(dict(batch), 0)
    assert out["image"].dtype == torch.uint8 and torch.equal(out["image"], batch["image"])
    v1, v2 = out["view1"], out["view2"]
    assert v1.shape == v2.shape == (32, 3, 32, 32) and v1.dtype == torch.float32
    assert not torch.allclose(v1, v2)
    lo = (0 - torch.tensor(dm.mean)) / torch.tensor(dm.std)
    hi = (1 - torch.tensor(dm.mean)) / torch.tensor(dm.std)
    assert (v1.amin((0, 2, 3)) >= lo - 1e-5).all() and (v1.amax((0, 2, 3)) <= hi + 1e-5).all()


def test_augment_config_rejects_bad_values():
    for kwargs, word in (({"scale": (0.5, 0.1)}, "scale"), ({"ratio": (0, 1)}, "ratio"),
                         ({"grey_prob": 1.5}, "grey_prob"),
                         ({"brightness": 1.0}, "brightness"), ({"hue": 0.7}, "hue")):
        with pytest.raises(ValueError, match=word):
            sa.SimCLRAugmentConfig(**kwargs)
    with pytest.raises(ValueError, match="RGB"):
        sa.SimCLRAugment((0,), (1,)).view(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


# ----------------------------------------------------------------------------- fine-tuning from the encoder
def _save(module: pl.LightningModule, path: Path) -> Path:
    """A real Lightning checkpoint of ``module`` (no training needed)."""
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def _perturb(module: torch.nn.Module) -> None:
    """Make every tensor (BN buffers included) distinctive, as after training."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand(t.shape, generator=g))
            else:
                t.add_(3)


def test_init_from_copies_exactly_the_encoder_and_leaves_the_head_new(tmp_path):
    torch.manual_seed(0)
    simclr = SimCLR(ConvNet6())
    _perturb(simclr.backbone)
    ckpt = _save(simclr, tmp_path / "simclr.ckpt")
    torch.manual_seed(1)
    fresh = ConvNet6()
    head_before = {k: v.clone() for k, v in fresh.head.state_dict().items()}
    model = Classifier(fresh, init_from=str(ckpt))
    source = simclr.backbone.features.state_dict()
    loaded = model.backbone.features.state_dict()
    assert loaded.keys() == source.keys() and len(loaded) > 20  # BN running stats and counters included
    for k in source:
        assert torch.equal(loaded[k], source[k]), k
    for k, v in model.backbone.head.state_dict().items():
        assert torch.equal(v, head_before[k]) and not torch.equal(v, simclr.backbone.head.state_dict()[k])
    # the exported encoder loads identically
    out = tmp_path / "enc" / "encoder.pt"
    assert export_encoder(ckpt, out) == len(source)
    again = ConvNet6()
    load_backbone_weights(again, str(out))
    assert all(torch.equal(again.features.state_dict()[k], source[k]) for k in source)


def test_export_command(tmp_path, capsys):
    ckpt = _save(SimCLR(ConvNet6()), tmp_path / "s.ckpt")
    pretrained_main(["export", str(ckpt), str(tmp_path / "e.pt")])  # python -m lightning_modules.pretrained export
    assert "encoder tensors" in capsys.readouterr().out
    keys = torch.load(tmp_path / "e.pt", weights_only=True)["state_dict"].keys()
    assert keys == {"features." + k for k in ConvNet6().features.state_dict()}
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".encoder")]  # no temporary left


def test_init_from_classifier_and_two_network_checkpoints(tmp_path):
    torch.manual_seed(0)
    clf = Classifier(ConvNet6())
    _perturb(clf.backbone)
    target = ConvNet6()
    load_backbone_weights(target, str(_save(clf, tmp_path / "clf.ckpt")))
    assert all(torch.equal(target.features.state_dict()[k], v) for k, v in clf.backbone.features.state_dict().items())
    # a two-network checkpoint (net1.*, net2.*): the first network is used
    net1, net2 = ConvNet6(), ConvNet6()
    _perturb(net1)
    state = {**{f"net1.{k}": v for k, v in net1.state_dict().items()},
             **{f"net2.{k}": v for k, v in net2.state_dict().items()}}
    torch.save({"state_dict": state}, tmp_path / "two.ckpt")
    target = ConvNet6()
    load_backbone_weights(target, str(tmp_path / "two.ckpt"))
    assert all(torch.equal(target.features.state_dict()[k], v) for k, v in net1.features.state_dict().items())


def test_wrong_checkpoints_fail_clearly(tmp_path):
    quarter = _save(SimCLR(CNN(width=0.25)), tmp_path / "cnn025.ckpt")
    with pytest.raises(ValueError, match=r"CNN: 'features\.0\.weight' has shape \(32, 3, 3, 3\).*\(64, 3, 3, 3\)"):
        load_backbone_weights(CNN(width=0.5), str(quarter))  # same keys, other widths
    with pytest.raises(ValueError, match=r"ResNet: encoder tensor 'features\.conv1\.weight' is missing"):
        Classifier(ResNet(18), init_from=str(quarter))  # another architecture, through the Classifier option
    with pytest.raises(ValueError, match=r"it has encoder tensor 'features\.1\.weight' that the backbone lacks"):
        load_backbone_weights(_features_only(), str(_save(SimCLR(CNN(width=0.125)), tmp_path / "cnn0125.ckpt")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Classifier(ConvNet6(), init_from=str(tmp_path / "nope.ckpt"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_backbone_weights(ConvNet6(), str(tmp_path / "junk.ckpt"))
    torch.save({"state_dict": {"classifier.weight": torch.zeros(2)}}, tmp_path / "noenc.ckpt")
    with pytest.raises(ValueError, match="no encoder tensors"):
        load_backbone_weights(ConvNet6(), str(tmp_path / "noenc.ckpt"))


def _features_only() -> torch.nn.Module:
    """A backbone whose encoder is only the first conv of CNN(width=0.125): every other checkpoint key is extra."""
    m = torch.nn.Module()
    m.features = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1))
    return m


def test_freeze_backbone_is_a_linear_probe():
    torch.manual_seed(0)
    model = Classifier(ConvNet6(dropout_rate=0.0), freeze_backbone=True,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    model.log = lambda *a, **k: None
    model.train()
    assert not model.backbone.features.training and model.backbone.head.training
    enc_before = {k: v.clone() for k, v in model.backbone.features.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.backbone.head.state_dict().items()}
    opt = model.configure_optimizers()
    batch = {"image": torch.randn(16, 3, 32, 32), "target": torch.randint(0, 10, (16,)),
             "clean_target": torch.randint(0, 10, (16,))}
    out = model.training_step(batch, 0)
    (out["loss"] if isinstance(out, dict) else out).backward()
    opt.step()
    for k, v in model.backbone.features.state_dict().items():  # weights and BN running stats untouched
        assert torch.equal(v, enc_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in model.backbone.head.state_dict().items())
    assert sum(len(g["params"]) for g in opt.param_groups) == 2  # head weight and bias only


def test_backbone_lr_makes_its_own_param_group():
    model = Classifier(ConvNet6(), backbone_lr=0.001, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    opt = model.configure_optimizers()
    enc, rest = opt.param_groups
    assert enc["lr"] == 0.001 and rest["lr"] == 0.1
    assert {id(p) for p in enc["params"]} == {id(p) for p in model.backbone.features.parameters()}
    assert {id(p) for p in rest["params"]} == {id(p) for p in model.backbone.head.parameters()}
    with pytest.raises(ValueError, match="contradict"):
        Classifier(ConvNet6(), backbone_lr=0.001, freeze_backbone=True)
    with pytest.raises(ValueError, match="backbone_lr must be >= 0"):
        Classifier(ConvNet6(), backbone_lr=-1.0)


# ----------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_simclr_ddp_on_cpu_gathers_negatives_from_both_processes(fake_cifar10_dir, tmp_path):
    probe = tmp_path / "probe"
    args = [
        "fit", "--config", str(REPO / "configs/simclr/cpu_cifar10.yaml"),
        "--data.init_args.data_dir", str(fake_cifar10_dir), "--data.init_args.val_size", "50",
        "--data.init_args.train_subset", "256", "--data.init_args.batch_size", "32",
        "--trainer.max_epochs", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.limit_train_batches", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=simclr_probe.GatherProbe", f"--trainer.callbacks.out_dir={probe}",
    ]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert info["world_size"] == 2
        assert info["batch_sizes"] == [32, 32]  # per process
        for rows, cols, max_label in info["shapes"]:
            # 2 x 32 local views scored against 2 x 64 gathered views minus themselves
            assert (rows, cols) == (64, 2 * 64 - 1)
            assert max_label == 32 * r + 31  # positives indexed into the gathered batch at this rank's offset
    assert list((tmp_path / "runs").rglob("last.ckpt"))


def test_coteaching_init_from_loads_both_networks(tmp_path):
    from lightning_modules.coteaching import CoTeaching

    torch.manual_seed(0)
    simclr = SimCLR(ConvNet6())
    _perturb(simclr.backbone)
    ckpt = _save(simclr, tmp_path / "simclr.ckpt")
    model = CoTeaching(ConvNet6(), init_from=str(ckpt))
    source = simclr.backbone.features.state_dict()
    for net in (model.net1, model.net2):
        assert all(torch.equal(net.features.state_dict()[k], v) for k, v in source.items())
    assert not torch.equal(model.net1.head.weight, model.net2.head.weight)  # heads stay independent
    with pytest.raises(ValueError, match="is missing"):
        CoTeaching(CNN(width=0.25), init_from=str(ckpt))


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "stack,expected",
    [
        (["cifar10_resnet18"], ("NoisyCIFAR10", 18, "torch.optim.SGD", 800, 512)),
        (["cifar10_resnet18", "cifar100_resnet18"], ("NoisyCIFAR100", 18, "torch.optim.SGD", 800, 512)),
        (["cifar10_resnet18", "resnet50_lars"], ("NoisyCIFAR10", 50, "lightly.utils.lars.LARS", 800, 512)),
        (["finetune_base", "noise_uniform90", "gce"], ("NoisyCIFAR10", 50, "torch.optim.SGD", 120, 100)),
        (["cpu_cifar10"], ("NoisyCIFAR10", None, "torch.optim.SGD", 80, 128)),
        (["cpu_finetune_ce"], ("NoisyCIFAR10", None, "torch.optim.SGD", 8, 128)),
    ],
)
def test_simclr_configs_parse(stack, expected, printed_config):
    configs = [a for name in stack for a in ("--config", str(REPO / f"configs/simclr/{name}.yaml"))]
    cfg = printed_config(["fit", *configs])
    data, model = cfg["data"], cfg["model"]["init_args"]
    assert (data["class_path"].split(".")[-1], model["backbone"]["init_args"].get("depth"),
            model["optimizer"]["class_path"], cfg["trainer"]["max_epochs"], data["init_args"]["batch_size"]) == expected
    if "gce" in stack:
        assert (model["loss"], model["gce_q"], data["init_args"]["noise_rate"]) == ("gce", 0.66, 0.9)
    for path in (REPO / "configs/simclr").glob("*.yaml"):
        assert path.read_text().startswith("#"), f"{path.name} lacks its header comment"
