"""Co-teaching: selection and schedules against hand-written values, the cross update, a
behavioural test on noisy 2-D blobs, bad input, and exact resume from a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from datamodules import NoisyCIFAR10, noise
from lightning_modules import CoTeaching
from lightning_modules import coteaching_selection as sel
from lightning_modules.coteaching import forget_rate_from_data
from lightning_modules.backbones import MLP

# ------------------------------------------------------------------ selection


def test_select_small_loss_keeps_exactly_the_smallest():
    losses = torch.tensor([0.9, 0.1, 0.5, 2.0, 0.3, 0.7, 1.1, 0.2, 0.05, 1.5])
    # sorted positions by loss: 8 (0.05), 1 (0.1), 7 (0.2), 4 (0.3), 2 (0.5), 5 (0.7), 0 (0.9), 6, 9, 3
    assert sel.select_small_loss(losses, 0.0).tolist() == [8, 1, 7, 4, 2, 5, 0, 6, 9, 3]
    assert sel.select_small_loss(losses, 0.5).tolist() == [8, 1, 7, 4, 2]
    assert sel.select_small_loss(losses, 0.2).tolist() == [8, 1, 7, 4, 2, 5, 0, 6]
    assert sel.select_small_loss(losses, 0.7).tolist() == [8, 1, 7]
    assert sel.select_small_loss(losses, 0.75).tolist() == [8, 1]  # round(2.5) = 2 (round half to even)
    assert sel.select_small_loss(losses, 0.99).tolist() == []


@pytest.mark.parametrize("batch, rate", [(128, 0.5), (128, 0.45), (127, 0.2), (100, 0.333), (7, 0.9)])
def test_select_small_loss_count_and_membership(batch, rate):
    g = torch.Generator().manual_seed(batch)
    losses = torch.rand(batch, generator=g)
    picked = sel.select_small_loss(losses, rate)
    k = int(round((1 - rate) * batch))
    assert len(picked) == k
    assert sorted(picked.tolist()) == sorted(sorted(range(batch), key=lambda i: losses[i].item())[:k])


def test_per_class_selection_keeps_the_fraction_within_every_given_label():
    # label 1's samples all have larger losses than label 0's: a batch-wide pick drops label 1 entirely
    losses = torch.tensor([0.3, 2.5, 0.1, 3.0, 0.2, 2.0, 0.4, 4.0, 0.5, 2.2])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    assert sorted(sel.select_small_loss(losses, 0.5).tolist()) == [0, 2, 4, 6, 8]
    # forget 0.4: keep round(0.6 * 5) = 3 per label; label 0 (positions 0 2 4 6 8): 2, 4, 0;
    # label 1 (positions 1 3 5 7 9, losses 2.5 3.0 2.0 4.0 2.2): 5, 9, 1
    picked = sel.select_small_loss(losses, 0.4, labels)
    assert sorted(picked.tolist()) == [0, 1, 2, 4, 5, 9]
    # uneven classes: 3 of label 2 -> round(0.5 * 3) = 2 (round half to even), 1 of label 7 -> round(0.5) = 0
    losses = torch.tensor([0.9, 0.1, 0.5, 0.05])
    labels = torch.tensor([2, 2, 2, 7])
    assert sorted(sel.select_small_loss(losses, 0.5, labels).tolist()) == [1, 2]
    assert sel.select_small_loss(torch.empty(0), 0.5, torch.empty(0, dtype=torch.long)).numel() == 0
    # with candidates (co-teaching+): the fraction is taken within each label among the candidates only
    loss1 = torch.tensor([0.1, 9.0, 0.2, 5.0, 0.3, 6.0])
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    p1, p2 = sel.cross_selection(loss1, loss1.flip(0), 0.5, torch.tensor([2, 3, 4, 5]), labels)
    # candidates 2-5 carry labels 1 1 0 1: label 1 among {2, 3, 5} keeps round(1.5) = 2, label 0 ({4}) none
    assert sorted(p1.tolist()) == [2, 3]  # network 1's losses there: 0.2 5.0 0.3 6.0
    assert sorted(p2.tolist()) == [3, 5]  # network 2's: 5.0 0.2 9.0 0.1


def test_cross_update_trains_each_network_on_the_others_picks():
    loss1 = torch.tensor([0.1, 3.0, 0.2, 2.0, 0.3, 1.0], requires_grad=True)
    loss2 = torch.tensor([3.0, 0.1, 2.0, 0.2, 1.0, 0.3], requires_grad=True)
    pick1, pick2 = sel.cross_selection(loss1, loss2, 0.5)
    assert sorted(pick1.tolist()) == [0, 2, 4] and sorted(pick2.tolist()) == [1, 3, 5]
    u1, u2 = sel.cross_update_losses(loss1, loss2, pick1, pick2)
    (u1 + u2).backward()
    # network 1 learns from network 2's picks (1, 3, 5), never from its own (0, 2, 4)
    assert loss1.grad.tolist() == pytest.approx([0, 1 / 3, 0, 1 / 3, 0, 1 / 3])
    assert loss2.grad.tolist() == pytest.approx([1 / 3, 0, 1 / 3, 0, 1 / 3, 0])
    assert u1.item() == pytest.approx((3.0 + 2.0 + 1.0) / 3)


def test_coteaching_plus_selects_only_among_disagreements():
    logits1 = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    logits2 = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    cand = sel.disagreement(logits1, logits2)
    assert cand.tolist() == [1, 2, 4]
    loss1 = torch.tensor([0.0, 0.5, 0.1, 0.0, 0.3])
    loss2 = torch.tensor([0.0, 0.2, 0.9, 0.0, 0.4])
    pick1, pick2 = sel.cross_selection(loss1, loss2, 1 / 3, cand)  # keep round(2/3 * 3) = 2 of 3
    assert pick1.tolist() == [2, 4] and pick2.tolist() == [1, 4]
    empty = torch.empty(0, dtype=torch.long)
    p1, p2 = sel.cross_selection(loss1, loss2, 0.5, empty)
    u1, u2 = sel.cross_update_losses(loss1, loss2, p1, p2)
    assert p1.numel() == p2.numel() == 0 and u1.item() == u2.item() == 0.0


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize(
    "epoch, rate, tk, c, expected",
    [(0, 0.5, 10, 1, 0.0), (5, 0.5, 10, 1, 0.25), (9, 0.5, 10, 1, 0.45), (10, 0.5, 10, 1, 0.5),
     (150, 0.5, 10, 1, 0.5), (5, 0.2, 10, 2, 0.05), (4, 0.45, 5, 0.5, 0.45 * math.sqrt(0.8)),
     (3, 0.3, 1, 1, 0.3)],
)
def test_forget_rate_schedule(epoch, rate, tk, c, expected):
    assert sel.forget_rate_at(epoch, rate, tk, c) == pytest.approx(expected)


@pytest.mark.parametrize(
    "epoch, expected_lr, expected_beta1",
    [(0, 1e-3, 0.9), (79, 1e-3, 0.9), (80, 1e-3, 0.1), (81, 1e-3 * 119 / 120, 0.1),
     (140, 5e-4, 0.1), (199, 1e-3 / 120, 0.1)],
)
def test_adam_plan_matches_reference_formula(epoch, expected_lr, expected_beta1):
    lr, beta1 = sel.adam_plan(epoch, 200, 80, 1e-3, 0.9, 0.1)
    assert lr == pytest.approx(expected_lr) and beta1 == pytest.approx(expected_beta1)
    lr_keep, beta_keep = sel.adam_plan(epoch, 200, 80, 1e-3, 0.9, None)  # cleanlab: beta1 stays
    assert lr_keep == pytest.approx(expected_lr) and beta_keep == 0.9


def test_estimate_forget_rate_from_bimodal_losses():
    g = torch.Generator().manual_seed(0)
    clean = 0.2 * torch.rand(7000, generator=g)
    noisy = 2.0 + 0.5 * torch.randn(3000, generator=g)
    losses = torch.cat([clean, noisy])[torch.randperm(10000, generator=g)]
    assert sel.estimate_forget_rate(losses) == pytest.approx(0.3, abs=0.02)
    assert sel.estimate_forget_rate(torch.ones(10)) == 0.0


# --------------------------------------------------------- the module itself


def tiny_module(**kw) -> CoTeaching:
    torch.manual_seed(0)
    return CoTeaching(MLP(input_channel=2, n_outputs=4, image_size=1, hidden=(16,)), num_classes=4, **kw)


def test_networks_are_independent_copies():
    m = tiny_module(forget_rate=0.5)
    p1, p2 = dict(m.net1.named_parameters()), dict(m.net2.named_parameters())
    assert p1.keys() == p2.keys()
    assert all(p1[k].data_ptr() != p2[k].data_ptr() and not torch.equal(p1[k], p2[k]) for k in p1)


@pytest.mark.parametrize("which", [1, 2, "mean"])
def test_eval_network_choice(which):
    m = tiny_module(forget_rate=0.2, eval_network=which).eval()
    x = torch.randn(5, 2)
    p1, p2 = m.net1(x).softmax(1), m.net2(x).softmax(1)
    want = {1: p1, 2: p2, "mean": (p1 + p2) / 2}[which]
    assert torch.allclose(m(x).softmax(1), want, atol=1e-6)


def test_module_gradients_come_from_the_other_networks_selection():
    """Would fail if each network trained on its own small-loss samples."""
    m = tiny_module(forget_rate=0.5)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(32, 2, generator=g), "target": torch.randint(0, 4, (32,), generator=g)}
    out = m.compute_updates(batch, forget_rate=0.5)
    pick1, pick2 = set(out["pick1"].tolist()), set(out["pick2"].tolist())
    assert len(pick1) == len(pick2) == 16 and pick1 != pick2  # otherwise the test proves nothing
    (out["update1"] + out["update2"]).backward()
    for net, peer_pick, own_pick in ((m.net1, out["pick2"], out["pick1"]), (m.net2, out["pick1"], out["pick2"])):
        got = [p.grad.clone() for p in net.parameters()]
        for want_pick, should_match in ((peer_pick, True), (own_pick, False)):
            net.zero_grad()
            F.cross_entropy(net(batch["image"][want_pick]), batch["target"][want_pick]).backward()
            same = all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(got, net.parameters()))
            assert same == should_match


# --------------------------------------------------- behaviour on noisy blobs


class Blobs(Dataset):
    """4 well-separated 2-D Gaussian blobs; labels with 40% symmetric noise."""

    def __init__(self, n: int = 2000, noise_rate: float = 0.4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.clean = torch.arange(n) % 4
        centres = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
        self.x = centres[self.clean] + 0.6 * torch.randn(n, 2, generator=g)
        self.noisy = noise.apply_noise(self.clean, "symmetric", noise_rate, 4, seed).noisy

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return {"image": self.x[idx], "target": self.noisy[idx], "clean_target": self.clean[idx], "index": idx}


class BlobData(pl.LightningDataModule):
    image_shape = (2, 1, 1)

    def __init__(self, noise_rate: float = 0.4):
        super().__init__()
        self.save_hyperparameters()
        self.ds = Blobs(noise_rate=noise_rate)
        self.noisy_targets = self.ds.noisy
        self.actual_noise_rate = noise.actual_noise_rate(self.ds.clean, self.ds.noisy)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(self.ds, batch_size=100, shuffle=True, collate_fn=lambda b: b, generator=g)


class KeepOutputs(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last = (outputs, batch)


def fit_blobs(max_epochs: int = 6, **kw) -> tuple[CoTeaching, pl.Trainer, KeepOutputs]:
    model = tiny_module(**kw)
    keep = KeepOutputs()
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[keep])
    trainer.fit(model, datamodule=BlobData())
    return model, trainer, keep


def test_label_precision_on_noisy_blobs_beats_random_selection():
    model, trainer, keep = fit_blobs(num_gradual=2, epoch_decay_start=6)
    m = trainer.callback_metrics
    assert model.forget_rate == pytest.approx(0.4)  # taken from the datamodule's noise_rate
    assert m["train/forget_rate"].item() == pytest.approx(0.4)
    for k in (1, 2):  # a random 60% of the batch would hold 60% clean labels
        assert m[f"train/label_precision_net{k}"].item() > 0.85
        assert m[f"train/num_selected_net{k}"].item() == pytest.approx(60.0)
    outputs, batch = keep.last  # per-sample information for other callbacks
    assert outputs["per_sample_loss"].shape == (100,) and not outputs["per_sample_loss"].requires_grad
    assert outputs["loss"].item() == pytest.approx(outputs["per_sample_loss"].mean().item())
    assert outputs["logits"].shape == (100, 4)


@pytest.mark.parametrize("noise_type, rate", [("symmetric", 0.4), ("pairflip", 0.45), ("uniform", 0.5),
                                              ("asymmetric", 0.4)])
def test_forget_rate_null_is_the_share_of_wrong_labels_the_noise_implies(fake_cifar10_dir, noise_type, rate):
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noise_type=noise_type, noise_rate=rate)
    dm.setup("fit")
    clean = dm.clean_targets
    if noise_type == "asymmetric":  # only truck, bird, deer, cat and dog flip, each with probability rate
        want = rate * torch.isin(clean, torch.tensor([9, 2, 3, 4, 5])).double().mean().item()
    elif noise_type == "uniform":  # a redraw from all ten classes returns the true one a tenth of the time
        want = rate * 0.9
    else:
        want = rate
    assert forget_rate_from_data(dm) == pytest.approx(want)


def test_forget_rate_auto_estimates_the_noise_rate():
    # lr 0.01: two warm-up epochs of 20 steps must fit the clean signal before losses separate
    model, trainer, _ = fit_blobs(max_epochs=3, forget_rate="auto", auto_warmup_epochs=2, num_gradual=2,
                                  epoch_decay_start=3, lr=0.01)
    blobs = Blobs()
    true_rate = (blobs.noisy != blobs.clean).float().mean().item()  # counted here, not by the datamodule
    assert model.forget_rate == pytest.approx(true_rate, abs=0.05)
    assert trainer.callback_metrics["train/actual_noise_rate"].item() == pytest.approx(true_rate)
    assert trainer.callback_metrics["train/forget_rate_estimate"].item() == pytest.approx(true_rate, abs=0.05)


def test_coteaching_plus_module_selects_within_disagreements():
    m = tiny_module(forget_rate=0.4, mode="coteaching_plus", init_epoch=0)
    g = torch.Generator().manual_seed(2)
    m.net2.load_state_dict(m.net1.state_dict())  # nearly the same network: they disagree on some points
    with torch.no_grad():
        m.net2.head.weight.add_(0.3 * torch.randn(m.net2.head.weight.shape, generator=g))
    batch = {"image": torch.randn(64, 2, generator=g), "target": torch.randint(0, 4, (64,), generator=g)}
    out = m.compute_updates(batch, forget_rate=0.4)
    disagree = set(sel.disagreement(out["logits1"], out["logits2"]).tolist())
    assert 0 < len(disagree) < 64
    for k in (1, 2):
        assert set(out[f"pick{k}"].tolist()) <= disagree
        assert len(out[f"pick{k}"]) == round(0.6 * len(disagree))
    # and in training: plain co-teaching keeps round(0.6 * 100) = 60 per batch, co-teaching+ fewer
    _, trainer, _ = fit_blobs(max_epochs=3, mode="coteaching_plus", init_epoch=1, num_gradual=1,
                              epoch_decay_start=3, lr=0.01)
    assert trainer.callback_metrics["train/num_selected_net1"].item() < 30


def test_per_class_module_picks_the_small_losses_of_every_label():
    g = torch.Generator().manual_seed(3)
    batch = {"image": torch.randn(64, 2, generator=g), "target": torch.randint(0, 4, (64,), generator=g)}
    out = tiny_module(forget_rate=0.5, selection="per_class").compute_updates(batch, forget_rate=0.5)
    y = batch["target"].tolist()
    for k, loss in ((1, out["loss1"]), (2, out["loss2"])):
        expected = []
        for label in set(y):
            members = sorted((i for i in range(64) if y[i] == label), key=lambda i: loss[i].item())
            expected += members[: round(0.5 * len(members))]
        assert sorted(out[f"pick{k}"].tolist()) == sorted(expected)
    batch_wide = tiny_module(forget_rate=0.5).compute_updates(batch, forget_rate=0.5)
    smallest = sorted(range(64), key=lambda i: batch_wide["loss1"][i].item())[:32]
    assert sorted(batch_wide["pick1"].tolist()) == sorted(smallest)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kw, match",
    [({"forget_rate": 1.0}, "forget_rate"), ({"forget_rate": -0.1}, "forget_rate"),
     ({"forget_rate": "half"}, "forget_rate"), ({"num_gradual": 0}, "num_gradual"),
     ({"mode": "coteachingplus"}, "mode"), ({"eval_network": 3}, "eval_network"),
     ({"beta1_decayed": 1.0}, "beta1_decayed"), ({"forget_rate": "auto", "auto_warmup_epochs": 0}, "auto_warmup"),
     ({"selection": "class"}, "selection 'class'; allowed: batch, per_class")],
)
def test_bad_arguments_fail_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_module(**kw)


def test_epoch_decay_start_past_max_epochs_fails_before_training():
    model = tiny_module(forget_rate=0.2, epoch_decay_start=10)
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="epoch_decay_start 10 is past trainer.max_epochs 5"):
        trainer.fit(model, datamodule=BlobData())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---------------------------------------------------------------- exact resume


RESUME_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  deterministic: true
  enable_progress_bar: false
  enable_model_summary: false
  logger: {{class_path: pytorch_lightning.loggers.TensorBoardLogger, init_args: {{save_dir: {root}, name: r}}}}
model:
  class_path: lightning_modules.CoTeaching
  init_args:
    backbone: {{class_path: lightning_modules.backbones.CNN, init_args: {{n_outputs: 10, width: 0.0625}}}}
    num_gradual: 1
    epoch_decay_start: 1
data:
  class_path: datamodules.NoisyCIFAR10
  init_args: {{data_dir: {data}, batch_size: 100, val_size: 100, noise_type: symmetric, noise_rate: 0.4,
              augmentation: crop_flip}}
"""


def _cli_fit(root, data_dir, max_epochs: int, ckpt_path=None) -> dict:
    """``train.py fit`` in-process, with train.py's default callbacks (checkpoints, RNG states);
    returns the run's last.ckpt (the model object itself ends holding the best-val weights)."""
    from train import main

    cfg = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    cfg.write_text(RESUME_CONFIG.format(root=root, data=data_dir))
    args = ["fit", "--config", str(cfg), "--trainer.max_epochs", str(max_epochs)]
    cli = main(args + (["--ckpt_path", str(ckpt_path)] if ckpt_path else []))
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    return torch.load(last, map_location="cpu", weights_only=False)


def test_resume_from_last_checkpoint_is_exact(tmp_path, fake_cifar10_dir):
    """2 epochs straight == 1 epoch, then ``fit --ckpt_path last.ckpt`` for 1 more (dropout and
    crop/flip draw random numbers, R(t), lr and beta1 change between the epochs)."""
    straight = _cli_fit(tmp_path / "a", fake_cifar10_dir, 2)
    first = _cli_fit(tmp_path / "b", fake_cifar10_dir, 1)
    assert first["coteaching"]["forget_rate"] == pytest.approx(0.4)  # the symmetric noise_rate
    assert len(first["optimizer_states"]) == 2  # both networks' Adam states
    last = tmp_path / "b" / "r" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = _cli_fit(tmp_path / "b", fake_cifar10_dir, 2, ckpt_path=last)
    assert straight["epoch"] == resumed["epoch"] == 1
    a, b = straight["state_dict"], resumed["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("net2.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for opt_a, opt_b in zip(straight["optimizer_states"], resumed["optimizer_states"]):
        assert opt_a["param_groups"][0]["betas"][0] == opt_b["param_groups"][0]["betas"][0] == pytest.approx(0.1)
        for s_a, s_b in zip(opt_a["state"].values(), opt_b["state"].values()):
            assert torch.equal(s_a["exp_avg"], s_b["exp_avg"]) and torch.equal(s_a["exp_avg_sq"], s_b["exp_avg_sq"])
    # and it is not trivially equal: the first epoch's weights differ from the second's
    assert not torch.equal(first["state_dict"]["net1.features.0.weight"], a["net1.features.0.weight"])


# ------------------------------------------- edges pinned by mutation testing (docs/mutation.md)
def _bimodal(n_clean: int = 700, n_noisy: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([0.2 * torch.rand(n_clean, generator=g), 2.0 + 0.5 * torch.randn(n_noisy, generator=g)])


def test_estimate_forget_rate_is_scale_free_and_clipped():
    losses = _bimodal()
    rate = sel.estimate_forget_rate(losses)
    assert rate == pytest.approx(0.3, abs=0.03)
    assert sel.estimate_forget_rate(losses * 0.01) == pytest.approx(rate, abs=1e-3)  # min-max normalised
    assert sel.estimate_forget_rate(losses) == sel.estimate_forget_rate(losses, seed=0)  # default seed 0
    g = torch.Generator().manual_seed(0)
    mostly_noisy = torch.cat([0.05 * torch.rand(30, generator=g), 1 + 0.05 * torch.rand(970, generator=g)])
    assert sel.estimate_forget_rate(mostly_noisy, max_rate=0.99) == pytest.approx(0.97, abs=1e-3)
    assert sel.estimate_forget_rate(mostly_noisy) == 0.95  # clipped to a valid forget_rate


def test_estimate_forget_rate_input_checks():
    assert 0.0 <= sel.estimate_forget_rate(torch.tensor([0.1, 0.9])) <= 0.95  # two losses are enough
    for bad in (torch.tensor([0.5]), torch.tensor([0.1, float("nan"), 0.3])):
        expected = rf"^need at least 2 finite losses to estimate a forget rate, got {len(bad)}$"
        with pytest.raises(ValueError, match=expected):
            sel.estimate_forget_rate(bad)


def test_select_small_loss_breaks_ties_by_position():
    """Equal losses (e.g. saturated ones): the earliest positions are kept, so the pick is deterministic."""
    losses = torch.zeros(5000)
    losses[::3] = 1.0
    kept = sel.select_small_loss(losses, 0.5)
    zeros = [i for i in range(5000) if i % 3]  # positions of the smaller loss, in order
    assert kept.tolist() == zeros[:2500]


def test_schedule_defaults_and_argument_errors():
    assert sel.forget_rate_at(5, 0.5) == pytest.approx(0.25)  # T_k = 10 epochs, linear (c = 1)
    assert sel.adam_plan(0, 200, 80) == pytest.approx((1e-3, 0.9))  # reference lr and beta1
    assert sel.adam_plan(80, 200, 80) == pytest.approx((1e-3, 0.1))  # beta1 switches to 0.1
    assert sel.adam_plan(9, 10, 9) == pytest.approx((1e-3, 0.1))  # a one-epoch decay starts at the full lr
    with pytest.raises(ValueError, match="^num_gradual must be >= 1, got 0$"):
        sel.forget_rate_at(1, 0.5, num_gradual=0)
    for c in (0, -1.0):
        with pytest.raises(ValueError, match=rf"^exponent must be > 0, got {c}$"):
            sel.forget_rate_at(1, 0.5, exponent=c)


# ------------------------------------------ the module's step, plan and logs, checked by hand
def test_label_smoothing_reaches_both_networks_losses():
    """loss = -(1 - eps) log p_y - eps / C * sum_c log p_c, per sample, for each network."""
    eps = 0.2
    m = tiny_module(forget_rate=0.5, label_smoothing=eps)
    g = torch.Generator().manual_seed(2)
    batch = {"image": torch.randn(16, 2, generator=g), "target": torch.randint(0, 4, (16,), generator=g)}
    out = m.compute_updates(batch, forget_rate=0.5)
    for k, net in ((1, m.net1), (2, m.net2)):
        logp = net(batch["image"]).float().log_softmax(1)
        want = -(1 - eps) * logp[torch.arange(16), batch["target"]] - eps / 4 * logp.sum(1)
        torch.testing.assert_close(out[f"loss{k}"], want)
        plain = -logp[torch.arange(16), batch["target"]]
        assert (out[f"loss{k}"] - plain).abs().max() > 1e-3  # smoothing changes the losses measurably


class StepRecorder(pl.Callback):
    """Each batch, when the step starts: both optimisers' (lr, beta1), the forget rate, the selection counts."""

    def __init__(self):
        self.plan, self.rates, self.before = [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.plan.append([(o.param_groups[0]["lr"], o.param_groups[0]["betas"][0]) for o in trainer.optimizers])
        self.rates.append(pl_module.current_forget_rate())
        self.before = None if pl_module._selection is None else pl_module._selection.clone()


def test_reference_adam_plan_forget_rate_selection_counts_and_logged_values():
    """The paper's Adam plan reaches both optimisers each epoch (lr 0.01 until epoch_decay_start 1, then
    lr * (E - e) / (E - 1) and beta1 switched to beta1_decayed, 0.2 here, not the default 0.1);
    R(t) = r * min((t / T_k) ** c, 1) with c = 2; each network's
    picks are counted for detection; the logged values are those of the step."""
    recorder, keep = StepRecorder(), KeepOutputs()
    model = tiny_module(forget_rate=0.4, num_gradual=2, exponent=2.0, lr=0.01, epoch_decay_start=1, beta1_decayed=0.2)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[keep, recorder],
                         limit_train_batches=1)
    trainer.fit(model, datamodule=BlobData())
    want = [(0.01, 0.9), (0.01 * 2 / 2, 0.2), (0.01 * 1 / 2, 0.2)]  # epochs 0, 1, 2 of E = 3
    assert [plan[0] for plan in recorder.plan] == [pytest.approx(w) for w in want]  # network 1's optimiser
    assert [plan[1] for plan in recorder.plan] == [pytest.approx(w) for w in want]  # network 2's optimiser
    assert recorder.rates == pytest.approx([0.0, 0.4 * (1 / 2) ** 2, 0.4])  # c = 1 would give 0.2 at t = 1
    m = trainer.callback_metrics
    assert float(m["train/lr"]) == pytest.approx(0.005) and float(m["train/beta1"]) == pytest.approx(0.2)
    assert not [k for k in m if k.endswith("_step")]  # epoch values only
    assert float(m["train/forget_rate"]) == pytest.approx(0.4)
    # last step: batch of 100, forget rate 0.4 -> each network keeps 60
    assert float(m["train/num_selected_net1"]) == 60 and float(m["train/num_selected_net2"]) == 60
    _, batch = keep.last
    index = batch["index"]
    counts = model._selection - recorder.before  # what the last step added
    assert torch.equal(counts[0, index], torch.full((100,), 2.0))  # offered to both networks
    assert counts[1, index].sum() == 120 and counts[1].sum() == 120  # 60 picks per network, only this batch
    # each network's logged label precision is the clean fraction of its 60 picks, so their mean is the
    # pick-count-weighted clean fraction of the batch
    clean = (batch["target"] == batch["clean_target"]).float()
    precision = (float(m["train/label_precision_net1"]) + float(m["train/label_precision_net2"])) / 2
    assert precision == pytest.approx(float((counts[1, index] * clean).sum()) / 120, abs=1e-6)
