"""Meta-Weight-Net: the functional virtual step against a hand-written one, the weighting net's
behaviour on a toy noisy problem, and the clean meta set of the CIFAR datamodules."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from datamodules import NoisyCIFAR10
from datamodules.meta_split import select_meta
from lightning_modules.backbones import CNN
from lightning_modules.meta_weight_net import (
    MetaWeightNet,
    WeightingNet,
    meta_loss_fn,
    virtual_meta_loss,
    weighted_loss,
)


def per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


# ------------------------------------------------------------------ pure parts
def test_weighted_loss_normalisations_by_hand():
    losses = torch.tensor([1.0, 2.0, 4.0])
    w = torch.tensor([0.5, 0.25, 0.25])
    total = 0.5 * 1 + 0.25 * 2 + 0.25 * 4  # 2.0
    assert weighted_loss(losses, w, "sum").item() == pytest.approx(total / 1.0)
    assert weighted_loss(losses, 2 * w, "sum").item() == pytest.approx(total)  # invariant to the weights' scale
    assert weighted_loss(losses, w, "batch").item() == pytest.approx(total / 3)
    assert weighted_loss(losses, w, "none").item() == pytest.approx(total)
    with pytest.raises(ValueError, match="weight_norm 'mean'"):
        weighted_loss(losses, w, "mean")


def test_weighting_net_shape_range_and_bad_input():
    v = WeightingNet(hidden=100)
    assert sum(p.numel() for p in v.parameters()) == 100 + 100 + 100 + 1  # 1 -> 100 -> 1
    w = v(torch.linspace(0, 10, 7))
    assert w.shape == (7,) and bool(((w > 0) & (w < 1)).all())
    with pytest.raises(ValueError, match="hidden size"):
        WeightingNet(hidden=0)


def test_meta_loss_mae_is_one_minus_p_true():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    p = logits.softmax(1)
    expected = (1 - p[torch.arange(2), y]).mean()
    assert meta_loss_fn(logits, y, "mae").item() == pytest.approx(expected.item(), rel=1e-6)
    assert meta_loss_fn(logits, y, "ce").item() == pytest.approx(F.cross_entropy(logits, y).item())
    with pytest.raises(ValueError, match="meta_loss 'mse'"):
        meta_loss_fn(logits, y, "mse")


# ------------------------------------------- functional step == explicit copy
def _explicit_forward(x, W1, b1, gamma, beta, W2, b2, eps=1e-5):
    """Linear -> BatchNorm1d (train mode: batch statistics, biased variance) -> ReLU -> Linear, by hand."""
    h = x @ W1.T + b1
    mean, var = h.mean(0), h.var(0, unbiased=False)
    h = (h - mean) / torch.sqrt(var + eps) * gamma + beta
    return torch.relu(h) @ W2.T + b2


@pytest.mark.parametrize("norm", ["sum", "batch", "none"])
def test_functional_virtual_step_matches_explicit_parameter_copy(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    vnet = WeightingNet(hidden=8)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    xm, ym = torch.randn(6, 4), torch.randint(0, 3, (6,))
    lr = 0.3
    stats_before = {k: b.clone() for k, b in model.named_buffers()}

    # the module's way: torch.func.functional_call
    meta = virtual_meta_loss(model, vnet, x, y, xm, ym, lr, per_sample_ce, norm, "ce")
    got = torch.autograd.grad(meta, list(vnet.parameters()))

    # an explicit copy of every parameter, the virtual step written out by hand
    copy = [t.detach().clone().requires_grad_() for t in (
        model[0].weight, model[0].bias, model[1].weight, model[1].bias, model[3].weight, model[3].bias)]
    losses = F.cross_entropy(_explicit_forward(x, *copy), y, reduction="none")
    w = vnet(losses.detach())
    inner = (w * losses).sum()
    inner = inner / w.sum() if norm == "sum" else inner / len(losses) if norm == "batch" else inner
    grads = torch.autograd.grad(inner, copy, create_graph=True)
    stepped = [p - lr * g for p, g in zip(copy, grads)]
    ref_meta = F.cross_entropy(_explicit_forward(xm, *stepped), ym)
    want = torch.autograd.grad(ref_meta, list(vnet.parameters()))

    assert meta.item() == pytest.approx(ref_meta.item(), rel=1e-5)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    assert any(g.abs().max() > 0 for g in got)
    # the real classifier is untouched: no gradient, running statistics unchanged
    assert all(p.grad is None for p in model.parameters())
    for k, b in model.named_buffers():
        assert torch.equal(b, stats_before[k]), k


# --------------------------------------------------- toy problem with flips
def test_weighting_net_moves_weight_off_flipped_samples():
    """Two Gaussian blobs, 40 % of the training labels flipped, a classifier that already
    separates them: the meta gradient must push the weights of flipped (high-loss) samples down."""
    g = torch.Generator().manual_seed(0)
    n = 200
    clean = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.7 + (2 * clean[:, None] - 1) * torch.tensor([2.0, 0.0])
    flipped = torch.rand(n, generator=g) < 0.4
    noisy = torch.where(flipped, 1 - clean, clean)
    xm_y = torch.arange(40) % 2
    xm = torch.randn(40, 2, generator=g) * 0.7 + (2 * xm_y[:, None] - 1) * torch.tensor([2.0, 0.0])

    model = nn.Linear(2, 2)
    with torch.no_grad():  # a reasonable, not perfect, classifier: flipped samples get high loss
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        model.bias.zero_()
    torch.manual_seed(0)
    vnet = WeightingNet(hidden=100)
    opt = torch.optim.Adam(vnet.parameters(), lr=1e-2)
    losses = per_sample_ce(model(x), noisy).detach()
    assert losses[flipped].mean() > 3 * losses[~flipped].mean()
    w0 = vnet(losses).detach()

    meta = virtual_meta_loss(model, vnet, x, noisy, xm, xm_y, 1.0, per_sample_ce, "sum")
    meta.backward()
    assert sum(float(p.grad.abs().sum()) for p in vnet.parameters()) > 1e-6
    for _ in range(30):
        opt.step()
        opt.zero_grad()
        virtual_meta_loss(model, vnet, x, noisy, xm, xm_y, 1.0, per_sample_ce, "sum").backward()
    w1 = vnet(losses).detach()
    assert w1[flipped].mean() < w0[flipped].mean() - 0.05
    assert w1[flipped].mean() < w1[~flipped].mean() - 0.1


# ----------------------------------------------------------- meta set (data)
def _dm(root, **kw) -> NoisyCIFAR10:
    args = dict(data_dir=str(root), batch_size=32, val_size=100, noise_type="symmetric", noise_rate=0.4)
    args.update(kw)
    dm = NoisyCIFAR10(**args)
    dm.setup("fit")
    return dm


def test_meta_set_is_clean_balanced_deterministic_and_never_trained_on(fake_cifar10_dir):
    dm = _dm(fake_cifar10_dir, meta_size=5, meta_seed=3)
    meta = dm.meta_indices
    assert len(meta) == 50
    assert torch.bincount(dm.clean_targets[meta], minlength=10).tolist() == [5] * 10
    assert not set(meta.tolist()) & set(dm.val_indices.tolist())
    assert len(dm.train_indices) + len(meta) + len(dm.val_indices) == len(dm.clean_targets)
    assert torch.equal(_dm(fake_cifar10_dir, meta_size=5, meta_seed=3).meta_indices, meta)
    assert not torch.equal(_dm(fake_cifar10_dir, meta_size=5, meta_seed=4).meta_indices, meta)

    seen_train, seen_meta = [], []
    for batch, _, _ in dm.train_dataloader():  # one full epoch of the CombinedLoader
        batch = dm.on_after_batch_transfer(batch, 0)
        assert batch["train"]["image"].dtype == torch.float32  # each sub-batch normalised
        seen_train.append(batch["train"]["index"])
        seen_meta.append(batch["meta"]["index"])
        assert torch.equal(batch["meta"]["target"], dm.clean_targets[batch["meta"]["index"]])
    seen_train, seen_meta = torch.cat(seen_train), torch.cat(seen_meta)
    assert len(seen_train) >= len(dm.train_indices) - 32  # the whole epoch (drop_last aside)
    assert not set(seen_train.tolist()) & set(meta.tolist())
    assert set(seen_meta.tolist()) <= set(meta.tolist())


def test_meta_size_zero_leaves_the_split_and_loader_unchanged(fake_cifar10_dir):
    plain, zero = _dm(fake_cifar10_dir), _dm(fake_cifar10_dir, meta_size=0)
    assert torch.equal(plain.train_indices, zero.train_indices)
    assert isinstance(zero.train_dataloader(), torch.utils.data.DataLoader)


def test_meta_set_larger_than_a_class_fails_naming_it(fake_cifar10_dir):
    with pytest.raises(ValueError, match=r"meta_size 1000 per class is larger than class 0 \(airplane\)"):
        _dm(fake_cifar10_dir, meta_size=1000)
    with pytest.raises(ValueError, match="meta_size must be >= 0"):
        NoisyCIFAR10(data_dir=str(fake_cifar10_dir), meta_size=-1)
    with pytest.raises(ValueError, match=">= 0 images per class"):
        select_meta(torch.zeros(4, dtype=torch.long), torch.arange(4), -1, 1)


# ------------------------------------------------------------ the module
def test_module_trains_both_networks_and_needs_a_meta_set(fake_cifar10_dir, tmp_path):
    torch.manual_seed(0)
    model = MetaWeightNet(CNN(n_outputs=10, width=0.125), optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=_dm(fake_cifar10_dir, meta_size=5))
    after = model.state_dict()
    assert not torch.equal(after["weighting_net.net.0.weight"], before["weighting_net.net.0.weight"])
    assert not torch.equal(after["backbone.head.weight"], before["backbone.head.weight"])
    bn = "backbone.features.1.num_batches_tracked"
    assert int(after[bn]) == 2  # one running-stat update per step: the virtual forwards use clones
    assert {"train/meta_loss", "train/weight_flipped", "train/weight_correct"} <= set(trainer.callback_metrics)

    plain = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="meta_size > 0"):
        plain.fit(MetaWeightNet(CNN(n_outputs=10, width=0.125)), datamodule=_dm(fake_cifar10_dir))


def test_module_rejects_bad_options():
    cnn = CNN(n_outputs=10, width=0.125)
    with pytest.raises(ValueError, match="weight_norm 'avg'"):
        MetaWeightNet(cnn, weight_norm="avg")
    with pytest.raises(ValueError, match="meta_loss 'mse'"):
        MetaWeightNet(cnn, meta_loss="mse")
    with pytest.raises(ValueError, match="unknown loss 'nll'"):
        MetaWeightNet(cnn, loss="nll")


def test_init_from_loads_the_encoder_only(tmp_path):
    torch.manual_seed(1)
    source = CNN(n_outputs=10, width=0.125)
    torch.save({"state_dict": {f"features.{k}": v for k, v in source.features.state_dict().items()}},
               tmp_path / "encoder.pt")
    torch.manual_seed(2)
    model = MetaWeightNet(CNN(n_outputs=10, width=0.125), init_from=str(tmp_path / "encoder.pt"))
    for k, v in source.features.state_dict().items():
        assert torch.equal(model.backbone.features.state_dict()[k], v), k
    assert not torch.equal(model.backbone.head.weight, source.head.weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MetaWeightNet(CNN(n_outputs=10, width=0.125), init_from=str(tmp_path / "missing.ckpt"))


# ------------------------------------------------ one real training step, by hand
class _MetaBlobs(pl.LightningDataModule):
    """One training batch and one clean meta batch of 2-D points, 3 classes."""

    image_shape = (2, 1, 1)

    def __init__(self):
        super().__init__()
        self.save_hyperparameters({"meta_size": 1})
        g = torch.Generator().manual_seed(5)
        y, ym = torch.arange(12) % 3, torch.arange(6) % 3
        given = torch.tensor([0, 1, 2, 1, 1, 2, 0, 0, 2, 0, 1, 1])  # wrong at 3, 4, 6, 8, 9
        self.train = {"image": torch.randn(12, 2, generator=g), "target": given, "clean_target": y,
                      "index": torch.arange(12)}
        self.meta = {"image": torch.randn(6, 2, generator=g), "target": ym, "clean_target": ym,
                     "index": torch.arange(100, 106)}

    def train_dataloader(self):
        return torch.utils.data.DataLoader([{"train": self.train, "meta": self.meta}], batch_size=None)


class _KeepStep(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.outputs = outputs


def _mlp_by_hand(x, w1, b1, w2, b2):
    """The MLP backbone (Flatten -> Linear -> ReLU -> Dropout(0) -> Linear) written out."""
    return torch.relu(x.flatten(1) @ w1.T + b1) @ w2.T + b2


def _vnet_by_hand(losses, a1, c1, a2, c2):
    """The weighting net (Linear(1, h) -> ReLU -> Linear(h, 1) -> sigmoid) written out."""
    return torch.sigmoid(torch.relu(losses[:, None] @ a1.T + c1) @ a2.T + c2).squeeze(1)


def _normalised(w: torch.Tensor, losses: torch.Tensor, norm: str) -> torch.Tensor:
    return (w * losses).sum() / (w.sum() if norm == "sum" else len(losses))


@pytest.mark.parametrize("norm, meta_kind", [("sum", "ce"), ("batch", "mae")])
def test_real_step_uses_the_updated_weighting_net_and_the_current_lr(norm, meta_kind):
    """One step of the module against the paper's Algorithm 1 written out by hand, with a warm-up
    schedule so that the optimiser's current lr (base / 3) differs from the configured one."""
    from lightning_modules.backbones import MLP

    base_lr, meta_lr = 0.3, 100.0  # a large meta step: the updated V differs measurably from the old one
    torch.manual_seed(0)
    model = MetaWeightNet(MLP(input_channel=2, n_outputs=3, image_size=1, hidden=(8,)), num_classes=3, hidden=5,
                          optimizer=lambda p: torch.optim.SGD(p, lr=base_lr),
                          meta_optimizer=lambda p: torch.optim.SGD(p, lr=meta_lr), warmup_epochs=3,
                          weight_norm=norm, meta_loss=meta_kind)
    theta0 = [p.detach().clone() for p in model.backbone.parameters()]  # w1, b1, w2, b2
    v0 = [p.detach().clone() for p in model.weighting_net.parameters()]  # a1, c1, a2, c2
    dm, keep = _MetaBlobs(), _KeepStep()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[keep])
    trainer.fit(model, datamodule=dm)
    lr = base_lr / 3  # warm-up over 3 epochs of 1 step: factor (0 + 1) / 3 at the first step
    assert keep.lr == pytest.approx(lr)
    x, y, xm, ym = dm.train["image"], dm.train["target"], dm.meta["image"], dm.meta["target"]

    def meta_step(step_lr: float) -> list[torch.Tensor]:
        """Virtual SGD step of the classifier, meta loss, one SGD step of V: the updated V."""
        theta = [t.clone().requires_grad_() for t in theta0]
        v = [t.clone().requires_grad_() for t in v0]
        losses = F.cross_entropy(_mlp_by_hand(x, *theta), y, reduction="none")
        w = _vnet_by_hand(losses.detach(), *v)
        grads = torch.autograd.grad(_normalised(w, losses, norm), theta, create_graph=True)
        virtual = [t - step_lr * g for t, g in zip(theta, grads)]
        logits_m = _mlp_by_hand(xm, *virtual)
        if meta_kind == "ce":
            meta = F.cross_entropy(logits_m, ym)
        else:  # 1 - p of the clean label
            meta = (1 - logits_m.softmax(1)[torch.arange(len(ym)), ym]).mean()
        return [t - meta_lr * g for t, g in zip(v0, torch.autograd.grad(meta, v))]

    v1 = meta_step(lr)
    for got, want in zip(model.weighting_net.parameters(), v1):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)
    wrong_lr = meta_step(base_lr)  # the configured lr instead of the current one gives another V
    assert max((a - b).abs().max().item() for a, b in zip(v1, wrong_lr)) > 1e-4

    # real step: weights from the UPDATED V on the losses of the (not yet updated) classifier
    theta = [t.clone().requires_grad_() for t in theta0]
    losses = F.cross_entropy(_mlp_by_hand(x, *theta), y, reduction="none")
    with torch.no_grad():
        w1, w0 = _vnet_by_hand(losses, *v1), _vnet_by_hand(losses, *v0)
    real = _normalised(w1, losses, norm)
    out = keep.outputs
    torch.testing.assert_close(out["weights"], w1, rtol=1e-5, atol=1e-7)
    # what LabelNoiseDiagnostics reads: the per-sample losses and logits of the real step
    torch.testing.assert_close(out["per_sample_loss"], losses.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["logits"], _mlp_by_hand(x, *theta0), rtol=1e-5, atol=1e-6)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2 * base_lr / 3)  # schedule stepped once
    assert out["loss"].item() == pytest.approx(real.item(), rel=1e-5)
    # the test can tell: the old V's weights, or the plain mean, give other losses
    assert abs(_normalised(w0, losses, norm).item() - real.item()) > 1e-4
    assert abs(losses.mean().item() - real.item()) > 1e-4
    grads = torch.autograd.grad(real, theta)
    for got, t, g in zip(model.backbone.parameters(), theta0, grads):
        torch.testing.assert_close(got.detach(), t - lr * g, rtol=1e-5, atol=1e-7)


def test_module_per_sample_gce_uses_its_q_and_a_plain_batch_is_refused():
    from lightning_modules.backbones import MLP

    model = MetaWeightNet(MLP(input_channel=2, n_outputs=3, image_size=1, hidden=(4,)), num_classes=3,
                          loss="gce", gce_q=0.3)
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]]), torch.tensor([0, 2])
    p = logits.softmax(1)[torch.arange(2), y]
    torch.testing.assert_close(model.per_sample_loss(logits, y), (1 - p ** 0.3) / 0.3)
    with pytest.raises(ValueError, match=r"^MetaWeightNet expects \{'train': batch, 'meta': batch\}; "
                                         r"set the datamodule's meta_size > 0$"):
        model.training_step({"image": torch.zeros(2, 2), "target": y}, 0)


def test_pure_parts_defaults_and_messages():
    """Defaults documented in the module: ``sum`` normalisation, ``ce`` meta loss; exact errors."""
    losses, w = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.25, 0.125, 0.125])  # weights sum to 0.5
    assert weighted_loss(losses, w).item() == pytest.approx((0.25 + 0.25 + 0.5) / 0.5)  # sum w L / sum w
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 2])
    assert meta_loss_fn(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())
    with pytest.raises(ValueError, match=r"^unknown weight_norm 'mean'; allowed: sum, batch, none$"):
        weighted_loss(losses, w, "mean")
    with pytest.raises(ValueError, match=r"^unknown meta_loss 'mse'; allowed: ce, mae$"):
        meta_loss_fn(logits, y, "mse")
    torch.manual_seed(0)
    model, vnet = nn.Linear(2, 3), WeightingNet(hidden=4)
    x, xm = torch.randn(6, 2), torch.randn(4, 2)
    yt, ym = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 2, 0])
    default = virtual_meta_loss(model, vnet, x, yt, xm, ym, 0.5, per_sample_ce)
    assert default.item() == virtual_meta_loss(model, vnet, x, yt, xm, ym, 0.5, per_sample_ce, "sum", "ce").item()


def test_virtual_step_takes_each_parameter_groups_current_lr():
    """With ``backbone_lr`` the encoder (w1, b1) and the head (w2, b2) sit in groups with different lrs;
    the virtual step of Algorithm 1, written out by hand with each tensor's own current lr, gives the
    weighting net the module ends up with. One lr for all (either group's) gives another one."""
    from lightning_modules.backbones import MLP

    base_lr, encoder_lr, meta_lr = 0.3, 0.02, 100.0
    torch.manual_seed(0)
    model = MetaWeightNet(MLP(input_channel=2, n_outputs=3, image_size=1, hidden=(8,)), num_classes=3, hidden=5,
                          optimizer=lambda p: torch.optim.SGD(p, lr=base_lr),
                          meta_optimizer=lambda p: torch.optim.SGD(p, lr=meta_lr), warmup_epochs=3,
                          backbone_lr=encoder_lr)
    theta0 = [p.detach().clone() for p in model.backbone.parameters()]  # w1, b1 (features), w2, b2 (head)
    v0 = [p.detach().clone() for p in model.weighting_net.parameters()]
    dm = _MetaBlobs()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    x, y, xm, ym = dm.train["image"], dm.train["target"], dm.meta["image"], dm.meta["target"]

    def meta_step(step_lrs: list[float]) -> list[torch.Tensor]:
        theta = [t.clone().requires_grad_() for t in theta0]
        v = [t.clone().requires_grad_() for t in v0]
        losses = F.cross_entropy(_mlp_by_hand(x, *theta), y, reduction="none")
        w = _vnet_by_hand(losses.detach(), *v)
        grads = torch.autograd.grad(_normalised(w, losses, "sum"), theta, create_graph=True)
        virtual = [t - lr * g for t, g, lr in zip(theta, grads, step_lrs)]
        meta = F.cross_entropy(_mlp_by_hand(xm, *virtual), ym)
        return [t - meta_lr * g for t, g in zip(v0, torch.autograd.grad(meta, v))]

    encoder, head = encoder_lr / 3, base_lr / 3  # both groups at the warm-up factor 1/3 of the first step
    want = meta_step([encoder, encoder, head, head])
    for got, w in zip(model.weighting_net.parameters(), want):
        torch.testing.assert_close(got.detach(), w, rtol=1e-5, atol=1e-7)
    for one_lr in (encoder, head):
        other = meta_step([one_lr] * 4)
        assert max((a - b).abs().max().item() for a, b in zip(want, other)) > 1e-4
