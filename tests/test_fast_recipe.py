"""The airbench-class network and recipe pieces: each checked against values computed by hand
or by an independent route (not by the code under test)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from callbacks.lookahead import Lookahead
from callbacks.patch_whitening import PatchWhitening
from datamodules import NoisyCIFAR10
from datamodules.train_augmentations import TRAIN_AUGMENTATIONS
from lightning_modules import Classifier
from lightning_modules.backbones import AirbenchNet, Backbone
from lightning_modules.optim_groups import scale_norm_groups, split_norm_groups
from lightning_modules.tta import tta_logits
from lightning_modules.whitening import image_patches, init_patch_whitening, whitening_filters


# ------------------------------------------------------------------------------------- backbone
def test_airbench_net_has_the_published_shape():
    net = AirbenchNet()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 24, (2, 2)), (24, 64, (3, 3)), (64, 64, (3, 3)), (64, 256, (3, 3)), (256, 256, (3, 3)),
        (256, 256, (3, 3)), (256, 256, (3, 3)),
    ]
    n_params = sum(p.numel() for p in net.parameters())
    # by hand: 24*12+24 + 9*(24*64+64*64+64*256+256*256+256*256+256*256)
    #          + 2 * (64+64+256+256+256+256) (BN weight and bias) + 2560
    assert n_params == 312 + 9 * (1536 + 4096 + 16384 + 65536 * 3) + 2 * 1152 + 2560
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert not convs[0].weight.requires_grad and convs[0].bias.requires_grad  # whitening: only the bias learns
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not n.weight.requires_grad and n.bias.requires_grad for n in norms)


def test_airbench_convs_start_as_identity_on_their_first_channels():
    net = AirbenchNet()
    conv = net.features[2].conv1  # 24 -> 64
    x = torch.randn(1, 24, 5, 5)
    assert torch.allclose(conv(x)[:, :24], x)


def test_airbench_logits_are_scaled_by_one_ninth():
    net = AirbenchNet()
    feats = torch.randn(4, 256)
    assert torch.allclose(net.head(feats), feats @ net.head[0].weight.T / 9)


# ------------------------------------------------------------------------------------- whitening
def _correlated_images(n=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 8, 8, generator=g)
    mix = torch.tensor([[1.0], [0.8], [0.3]]).view(1, 3, 1, 1)
    return base * mix + 0.1 * torch.randn(n, 3, 8, 8, generator=g)


def test_whitening_decorrelates_the_patches():
    images = _correlated_images()
    conv = nn.Conv2d(3, 24, 2, bias=False)
    init_patch_whitening(conv, images, eps=1e-8)
    out = conv(images)  # [N, 24, 7, 7]
    first = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    moment = first.T @ first / len(first)
    assert torch.allclose(moment, torch.eye(12, dtype=moment.dtype), atol=1e-3)
    assert torch.allclose(out[:, 12:], -out[:, :12])


def test_whitening_filters_are_ordered_by_eigenvalue():
    images = _correlated_images()
    patches = image_patches(images, (2, 2)).double().numpy()
    eigenvalues = np.linalg.eigvalsh(patches.T @ patches / len(patches))[::-1]  # numpy, descending
    filters = whitening_filters(images, (2, 2), eps=0.0).double().reshape(24, 12)[:12]
    # each filter f = v / sqrt(lambda): |f|^2 = 1 / lambda
    assert np.allclose((filters ** 2).sum(1).numpy(), 1 / eigenvalues, rtol=1e-4)


def test_image_patches_match_a_loop():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    rows = image_patches(images, (2, 2))
    expected = [images[n, :, i:i + 2, j:j + 2].reshape(-1) for n in range(2) for i in range(3) for j in range(3)]
    assert torch.equal(rows, torch.stack(expected))


def test_whitening_refuses_a_conv_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"needs a conv with 24 output channels \(2 x 3 x 2 x 2\).*got 16"):
        init_patch_whitening(nn.Conv2d(3, 16, 2), torch.zeros(2, 3, 8, 8))


# ------------------------------------------------------------------------------------- lookahead
class _Scalar(Backbone):
    def __init__(self):
        super().__init__()
        self.features, self.head, self.feature_dim = nn.Identity(), nn.Linear(1, 1, bias=False), 1


def test_lookahead_matches_hand_computed_values():
    """every 2 steps, decay 0.5 * t/T over T = 4: w goes 1 -> 2 (slow 0.25*0 + 0.75*2 = 1.5) -> 2.5 -> end = 1.5."""
    module = nn.Module()
    module.backbone = _Scalar()
    w = module.backbone.head.weight
    with torch.no_grad():
        w.fill_(0.0)
    trainer = SimpleNamespace(estimated_stepping_batches=4, accumulate_grad_batches=1)
    cb = Lookahead(every=2, max_decay=0.5, power=1.0)
    cb.on_train_start(trainer, module)
    seen = []
    for step in range(4):
        with torch.no_grad():
            w.add_(1.0)  # the "optimiser step"
        cb.on_train_batch_end(trainer, module, None, None, step)
        seen.append(float(w))
    assert seen == [1.0, 1.5, 2.5, 1.5]
    assert float(cb.slow["backbone.head.weight"]) == 1.5


def test_lookahead_state_survives_a_checkpoint():
    module = nn.Module()
    module.backbone = _Scalar()
    trainer = SimpleNamespace(estimated_stepping_batches=10, accumulate_grad_batches=1)
    cb = Lookahead(every=1, max_decay=0.5, power=1.0)
    cb.on_train_start(trainer, module)
    with torch.no_grad():
        module.backbone.head.weight.fill_(4.0)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    restored = Lookahead(every=1, max_decay=0.5, power=1.0)
    restored.load_state_dict(cb.state_dict())
    with torch.no_grad():
        module.backbone.head.weight.fill_(-7.0)  # the live weights come from the checkpoint, the slow ones too
    restored.on_train_start(trainer, module)
    assert restored.batches == 1
    assert torch.equal(restored.slow["backbone.head.weight"], cb.slow["backbone.head.weight"])


# ------------------------------------------------------------------------------------- TTA
def test_tta_weights_views_like_airbench():
    """net = the top-left pixel. x = 0..8 in a 3x3 image: x[0,0] = 0, x[0,2] = 2, x[1,1] = 4.
    flip: (0 + 2) / 2 = 1. Shifted views (reflect pad 1): top-left and its mirror are both x[1,1] = 4.
    flip_translate: 0.5 * 1 + 0.5 * 4 = 2.5."""
    x = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    net = lambda im: im[:, :, 0, 0]  # noqa: E731
    assert float(tta_logits(net, x, "none")) == 0.0
    assert float(tta_logits(net, x, "flip")) == 1.0
    assert float(tta_logits(net, x, "flip_translate")) == 2.5
    with pytest.raises(ValueError, match="unknown tta 'mirror'; allowed: none, flip, flip_translate"):
        tta_logits(net, x, "mirror")


# ------------------------------------------------------------------------------------- optimiser groups
def test_norm_groups_get_scaled_lr_and_divided_weight_decay():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 5, 5))
    opt = torch.optim.SGD(split_norm_groups([{"params": list(net.parameters())}], net), lr=0.5, weight_decay=0.01)
    scale_norm_groups(opt, 64.0)
    by_kind = {g["norm"]: g for g in opt.param_groups}
    assert {id(p) for p in by_kind[True]["params"]} == {id(net[1].weight), id(net[1].bias)}
    assert by_kind[True]["lr"] == 32.0 and by_kind[True]["weight_decay"] == pytest.approx(0.01 / 64)
    assert by_kind[False]["lr"] == 0.5 and by_kind[False]["weight_decay"] == 0.01


class _LrRecorder(pl.Callback):
    def __init__(self):
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(sorted(g["lr"] for g in trainer.optimizers[0].param_groups))


def test_classifier_trains_with_airbench_groups_and_schedule(fake_cifar10_dir):
    """500 images, batch 100, 2 epochs = 10 steps; warm-up 1 epoch (5 steps) from 0.2, then down to 0.07."""
    model = Classifier(AirbenchNet(width=0.125), optimizer=lambda p: torch.optim.SGD(p, lr=1.5, weight_decay=0.001),
                       norm_lr_scale=64.0, lr_schedule="linear", warmup_epochs=1, warmup_start_factor=0.2,
                       final_lr_factor=0.07)
    rec = _LrRecorder()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[rec])
    trainer.fit(model, NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=100, val_size=0))
    factors = [0.2 + 0.8 * s / 5 for s in range(5)] + [0.07 + 0.93 * (1 - s / 5) for s in range(5)]
    assert len(rec.lrs) == 10
    for lrs, f in zip(rec.lrs, factors):
        assert lrs == pytest.approx([1.5 * f, 96.0 * f])


# ------------------------------------------------------------------------------------- augmentation
def test_crop2_flip_shifts_by_at_most_two_pixels():
    torch.manual_seed(0)
    aug = TRAIN_AUGMENTATIONS["crop2_flip"]((0.0,), (1 / 255,))  # normalisation = identity on 0..255
    img = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    img[0, 0, 16, 16] = 255
    seen = set()
    for _ in range(300):
        out = aug(img)
        y, x = (out[0, 0] == 255).nonzero()[0].tolist()
        seen.add((y - 16, x - 16) if x >= 14 else (y - 16, 15 - x))  # flipped: column 16 -> 15
    dys = {d[0] for d in seen}
    assert dys == {-2, -1, 0, 1, 2}


# ------------------------------------------------------------------------------------- callbacks in a real fit
class _BiasPerEpoch(pl.Callback):
    def __init__(self):
        self.biases: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        conv = pl_module.backbone.features[0]
        self.biases.append(conv.bias.detach().clone())
        self.weights.append(conv.weight.detach().clone())


def _trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", callbacks=callbacks)


def test_patch_whitening_sets_the_filters_and_freezes_the_bias(fake_cifar10_dir):
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=100, val_size=0)
    model = Classifier(AirbenchNet(width=0.125), optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    rec = _BiasPerEpoch()
    _trainer(3, [PatchWhitening(num_images=300, bias_epochs=1), rec]).fit(model, dm)
    images, _ = dm.training_images()
    expected = whitening_filters(dm.eval_transform(images[:300]), (2, 2))
    assert all(torch.allclose(w, expected, atol=1e-6) for w in rec.weights)  # set once, never trained
    assert torch.equal(rec.biases[0], rec.biases[1]) and torch.equal(rec.biases[1], rec.biases[2])  # from epoch 1


def test_patch_whitening_bias_trains_during_its_epochs(fake_cifar10_dir):
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=100, val_size=0)
    model = Classifier(AirbenchNet(width=0.125), optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    rec = _BiasPerEpoch()
    _trainer(3, [PatchWhitening(num_images=300, bias_epochs=2), rec]).fit(model, dm)
    assert not torch.equal(rec.biases[0], rec.biases[1])  # epoch 1 < bias_epochs: trained
    assert torch.equal(rec.biases[1], rec.biases[2])  # epoch 2: frozen, momentum and decay included


def test_patch_whitening_keeps_the_first_conv_of_a_pretrained_encoder(fake_cifar10_dir, tmp_path):
    """Fine-tuning from ``init_from``: the layers above were trained on the loaded filters, so they stay."""
    torch.manual_seed(0)
    source = AirbenchNet(width=0.125)
    with torch.no_grad():
        source.features[0].weight.normal_()  # unlike any whitening of the images
    encoder = tmp_path / "encoder.pt"
    torch.save({"state_dict": {f"features.{k}": v for k, v in source.features.state_dict().items()}}, encoder)
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=100, val_size=0)
    model = Classifier(AirbenchNet(width=0.125), init_from=str(encoder),
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    rec = _BiasPerEpoch()
    _trainer(2, [PatchWhitening(num_images=300, bias_epochs=1), rec]).fit(model, dm)
    assert all(torch.equal(w, source.features[0].weight) for w in rec.weights)
    images, _ = dm.training_images()
    assert not torch.allclose(rec.weights[0], whitening_filters(dm.eval_transform(images[:300]), (2, 2)), atol=1e-2)
    assert torch.equal(rec.biases[0], rec.biases[1])  # the bias still freezes after bias_epochs


class _EndWeights(pl.Callback):
    def on_train_end(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_lookahead_ends_both_coteaching_networks_on_the_slow_weights(fake_cifar10_dir):
    """Two optimisers step per batch: the final averaging must fire at the last *batch*, not half-way."""
    from lightning_modules.coteaching import CoTeaching

    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=100, val_size=0, noise_type="symmetric",
                      noise_rate=0.2)
    model = CoTeaching(AirbenchNet(width=0.125), forget_rate=0.2, num_gradual=1,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    look, end = Lookahead(every=3), _EndWeights()

    class AfterLookahead(pl.Callback):  # runs after Lookahead's hook: sees the weights it left
        weights: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.weights.append(pl_module.net2.head[0].weight.detach().clone())

    after = AfterLookahead()
    _trainer(2, [look, after, end]).fit(model, dm)
    assert look.batches == 10
    for key, slow in look.slow.items():
        assert torch.equal(end.state[key], slow), key
    # training goes on in the second half: the final "copy the average" happens at the last batch only.
    # Batch 9 is a lookahead step (every 3), and the last one copies back the same slow weights (decay 1
    # leaves them as they were): after batch 10 the network is exactly where batch 9 left it.
    w = after.weights
    assert all(not torch.equal(w[i], w[i + 1]) for i in range(5, 8))
    assert torch.equal(w[8], w[9])


def test_coteaching_with_an_optimiser_follows_the_per_step_schedule(fake_cifar10_dir):
    from lightning_modules.coteaching import CoTeaching

    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=100, val_size=0, noise_type="symmetric",
                      noise_rate=0.2)
    model = CoTeaching(AirbenchNet(width=0.125), forget_rate=0.2, num_gradual=1,
                       optimizer=lambda p: torch.optim.SGD(p, lr=1.0), norm_lr_scale=10.0, lr_schedule="linear",
                       final_lr_factor=0.0)

    class Lrs(pl.Callback):
        lrs: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lrs.append([sorted(g["lr"] for g in opt.param_groups) for opt in trainer.optimizers])

    rec = Lrs()
    _trainer(2, [rec]).fit(model, dm)
    assert len(rec.lrs) == 10
    for step, lrs in enumerate(rec.lrs):  # linear from 1 to 0 over 10 steps, both networks, norm groups x10
        f = 1 - step / 10
        assert lrs == [pytest.approx([f, 10 * f])] * 2


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    from datamodules.augment import alternating_flip

    index = torch.arange(10_000)
    even, odd = alternating_flip(index, 0), alternating_flip(index, 1)
    assert torch.equal(odd, ~even) and torch.equal(alternating_flip(index, 2), even)
    assert 0.48 < even.float().mean() < 0.52  # half of the images start mirrored
    # through the transform: an image whose left half is bright is mirrored exactly when the rule says so
    aug = TRAIN_AUGMENTATIONS["crop2_altflip"]((0.0,), (1 / 255,))
    img = torch.zeros(64, 1, 32, 32, dtype=torch.uint8)
    img[..., :12] = 255
    for epoch in (0, 1):
        out = aug(img, index=index[:64], epoch=epoch)
        mirrored = out[:, 0, 16, 31] == 255  # after a shift of at most 2 px the right edge is bright only if flipped
        assert torch.equal(mirrored, alternating_flip(index[:64], epoch))
