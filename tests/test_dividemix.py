"""DivideMix as a LightningModule: the split decides which labels are learnt from, network 1 learns
from network 2's division and vice versa, the division is the mixture of the gathered eval-mode
losses (checked against an independent computation, in bf16-mixed), bad input, exact resume and
two-process DDP (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import datamodules.train_augmentations
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture

from datamodules import NoisyCIFAR10
from lightning_modules import DivideMix
from lightning_modules.backbones import CNN, MLP
from process_group import ACCELERATOR
from resume_helpers import checked, final_weights, kill_callback, run_dir, train, write_config

BACKBONE = {"class_path": "lightning_modules.backbones.CNN", "init_args": {"n_outputs": 10, "width": 0.125}}
DIVIDEMIX = {
    "class_path": "lightning_modules.DivideMix",
    "init_args": {"backbone": BACKBONE, "warmup_epochs": 1, "lambda_u": 25.0, "rampup_length": 1.0},
}
TWO_VIEWS = {"augmentation": "crop_flip_twice"}


def tiny_model(**kw) -> DivideMix:
    torch.manual_seed(0)
    return DivideMix(MLP(n_outputs=3, hidden=(16,), image_size=4), num_classes=3, **kw)


def tiny_batch(n: int = 8) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 3, 4, 4, generator=g), "image2": torch.randn(n, 3, 4, 4, generator=g),
            "target": torch.randint(0, 3, (n,), generator=g), "index": torch.arange(n)}


def mixmatch_loss(model: DivideMix, batch: dict, clean_prob: torch.Tensor) -> dict:
    torch.manual_seed(5)  # the same MixUp draw every call
    return model.mixmatch_losses(model.net1, model.net2, batch, clean_prob, ramp=10.0)


def test_only_the_labels_of_the_labelled_part_enter_the_loss():
    model, batch = tiny_model(), tiny_batch()
    clean_prob = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])  # tau 0.5: 0..3 labelled, 4..7 not
    base = mixmatch_loss(model, batch, clean_prob)
    assert base["labelled"].tolist() == [True] * 4 + [False] * 4
    relabel_unlabelled = dict(batch, target=batch["target"].clone())
    relabel_unlabelled["target"][4:] = (batch["target"][4:] + 1) % 3
    assert torch.equal(mixmatch_loss(model, relabel_unlabelled, clean_prob)["loss"], base["loss"])
    relabel_labelled = dict(batch, target=batch["target"].clone())
    relabel_labelled["target"][0] = (batch["target"][0] + 1) % 3
    assert not torch.equal(mixmatch_loss(model, relabel_labelled, clean_prob)["loss"], base["loss"])
    # everything unlabelled: no supervised term, and the labels do not matter at all
    none = mixmatch_loss(model, batch, torch.zeros(8))
    assert none["loss_x"].item() == 0.0 and none["loss_u"].item() > 0.0


def test_unlabelled_targets_are_co_guessed_with_the_other_network():
    model, batch = tiny_model(), tiny_batch()
    unlabelled, labelled = torch.zeros(8), torch.ones(8)
    before_u = mixmatch_loss(model, batch, unlabelled)["loss"]
    before_l = mixmatch_loss(model, batch, labelled)["loss"]
    with torch.no_grad():
        for p in model.net2.parameters():
            p.mul_(3.0)
    assert not torch.equal(mixmatch_loss(model, batch, unlabelled)["loss"], before_u)  # the guesses moved
    assert torch.equal(mixmatch_loss(model, batch, labelled)["loss"], before_l)  # co-refinement is net1's own


def test_the_loss_weights_the_unlabelled_term_by_the_ramp_and_adds_the_prior():
    model, batch = tiny_model(prior_weight=0.5), tiny_batch()
    clean_prob = torch.tensor([0.9, 0.1] * 4)
    torch.manual_seed(5)
    out = model.mixmatch_losses(model.net1, model.net2, batch, clean_prob, ramp=7.0)
    expected = out["loss_x"] + 7.0 * out["loss_u"] + 0.5 * out["penalty"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


class RecordMixMatch(pl.Callback):
    """Wraps ``mixmatch_losses`` to record which network learns from which division."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.calls = []
        original = pl_module.mixmatch_losses

        def recording(net, other, batch, clean_prob, ramp):
            self.calls.append((net, other, clean_prob, ramp))
            return original(net, other, batch, clean_prob, ramp)

        pl_module.mixmatch_losses = recording


def fake_datamodule(data_dir, **kw) -> NoisyCIFAR10:
    return NoisyCIFAR10(data_dir=str(data_dir), batch_size=32, val_size=100, noise_type="symmetric",
                        noise_rate=0.4, noise_seed=0, **TWO_VIEWS, **kw)


@pytest.fixture(scope="module")
def fitted(fake_cifar10_dir):
    """Two epochs (one of warm-up) in bf16-mixed on the tiny CIFAR-10."""
    torch.manual_seed(0)
    model = DivideMix(CNN(n_outputs=10, width=0.125), warmup_epochs=1, rampup_length=1.0)
    dm = fake_datamodule(fake_cifar10_dir)
    recorder = RecordMixMatch()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=4, limit_val_batches=1, callbacks=[recorder])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, datamodule=dm)
    return model, dm, recorder, start


def test_each_network_learns_from_the_other_networks_division(fitted):
    model, _, recorder, start = fitted
    assert model.division_epoch == 1 and len(recorder.calls) == 2 * 4  # two calls per MixMatch batch
    div1, div2 = model.clean_prob
    assert not torch.equal(div1, div2)  # the two divisions differ, so a swap would show
    for i, (net, other, clean_prob, ramp) in enumerate(recorder.calls):
        if i % 2 == 0:
            assert net is model.net1 and other is model.net2 and torch.equal(clean_prob, div2)
        else:
            assert net is model.net2 and other is model.net1 and torch.equal(clean_prob, div1)
        assert ramp == pytest.approx(25.0 * min(1.0, (i // 2) / 4 / 1.0))  # epoch 1 + batch / 4 batches
    for name, before in start.items():
        if name.endswith(".weight") and before.is_floating_point():
            assert not torch.equal(before, model.state_dict()[name]), f"{name} never trained"


def reference_clean_prob(net: torch.nn.Module, dm: NoisyCIFAR10) -> np.ndarray:
    """Eval-mode CE on every un-augmented training image, min-max normalised, sklearn's mixture."""
    net.eval()
    idx = dm.train_indices
    x = dm.eval_transform(dm.training_set_images(idx))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(net(x).float(), dm.noisy_targets[idx], reduction="none").double().numpy()
    loss = (loss - loss.min()) / (loss.max() - loss.min())
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(loss[:, None])
    return gmm.predict_proba(loss[:, None])[:, gmm.means_.argmin()]


def test_division_is_the_mixture_posterior_of_each_networks_eval_losses(fitted):
    model, dm, _, _ = fitted
    model.divide()  # with the final weights, to compare with a computation from scratch
    for k, net in enumerate((model.net1, model.net2)):
        ref = reference_clean_prob(net, dm)
        got = model.clean_prob[k, dm.train_indices].double().numpy()
        assert np.abs(got - ref).max() < 1e-3, f"network {k + 1}"
    outside = torch.ones(len(dm.noisy_targets), dtype=torch.bool)
    outside[dm.train_indices] = False
    assert (model.clean_prob[:, outside] == 0).all()  # validation images are never divided
    # the mixture finds flipped labels: clean samples get the higher clean probability on average
    truly_clean = (dm.noisy_targets == dm.clean_targets)[dm.train_indices]
    prob = model.clean_prob[:, dm.train_indices].mean(0)
    assert prob[truly_clean].mean() > prob[~truly_clean].mean()


def test_oracle_division_labels_exactly_the_samples_whose_given_label_is_clean(fake_cifar10_dir):
    """The diagnostic ``division: oracle`` hands both networks the true split, with no mixture."""
    torch.manual_seed(0)
    model = DivideMix(CNN(n_outputs=10, width=0.125), warmup_epochs=1, rampup_length=1.0, division="oracle")
    dm = fake_datamodule(fake_cifar10_dir)
    recorder = RecordMixMatch()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                         limit_val_batches=1, callbacks=[recorder])
    trainer.fit(model, datamodule=dm)
    truly_clean = (dm.noisy_targets == dm.clean_targets).float()
    expected = torch.zeros_like(truly_clean)
    expected[dm.train_indices] = truly_clean[dm.train_indices]  # validation images are never divided
    assert 0 < expected.sum() < len(dm.train_indices)  # some labels flipped, some not
    assert model.division_epoch == 1 and len(recorder.calls) == 2 * 2
    for _, _, clean_prob, _ in recorder.calls:
        assert torch.equal(clean_prob, expected)


def test_bad_input_is_refused_early(fake_cifar10_dir):
    with pytest.raises(ValueError, match="p_threshold must be a number in \\[0, 1\\], got 1.5"):
        tiny_model(p_threshold=1.5)
    with pytest.raises(ValueError, match="loss_history must be an integer >= 1"):
        tiny_model(loss_history=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        tiny_model(temperature=0.0)
    with pytest.raises(ValueError, match="division must be gmm or oracle, got 'truth'"):
        tiny_model(division="truth")
    kw = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    model = DivideMix(CNN(n_outputs=10, width=0.125), warmup_epochs=2)
    with pytest.raises(ValueError, match="max_epochs 2 leaves no epoch after warmup_epochs 2"):
        pl.Trainer(max_epochs=2, **kw).fit(model, datamodule=fake_datamodule(fake_cifar10_dir))
    one_view = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=32, val_size=100)
    with pytest.raises(ValueError, match="augmentation: crop_flip_twice"):
        pl.Trainer(max_epochs=3, **kw).fit(model, datamodule=one_view)


@pytest.mark.parametrize("augmentation, shift", [("crop_flip_twice", 4), ("crop2_flip_twice", 2)])
def test_two_views_are_independent_augmentations_of_the_same_images(fake_cifar10_dir, augmentation, shift):
    dm = fake_datamodule(fake_cifar10_dir)
    dm.setup("fit")
    raw = dm.training_set_images()[:64]
    # one bright pixel in the middle of a dark image: each view moves it by at most `shift` per axis
    dot = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    dot[..., 16, 16] = 255
    views = datamodules.train_augmentations.TRAIN_AUGMENTATIONS[augmentation](dm.mean, dm.std)
    torch.manual_seed(0)
    moved = [views(dot.expand(200, -1, -1, -1))[k][:, 0].flatten(1).argmax(1) for k in ("image", "image2")]
    for positions in moved:
        rows, cols = positions // 32, positions % 32
        col_shift = torch.minimum((cols - 16).abs(), (31 - cols - 16).abs())  # a flip mirrors column 16 to 15
        assert (rows - 16).abs().max() == shift and col_shift.max() == shift
    torch.manual_seed(0)
    out = dm.train_transform(raw)
    assert set(out) == {"image", "image2"} and out["image"].shape == out["image2"].shape == (64, 3, 32, 32)
    assert not torch.equal(out["image"], out["image2"])
    # each view is a crop/flip of its own image: its centre pixels appear in the un-augmented image
    plain = dm.eval_transform(raw)
    assert (out["image"] - plain).abs().mean() < (out["image"] - plain.roll(1, 0)).abs().mean()


# ---------------------------------------------------------------- train.py runs (slow)
@pytest.mark.slow
def test_dividemix_sigkill_then_resume_equals_uninterrupted_run(fake_cifar10_dir, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    checked(train(["fit", "--config", str(write_config(ref, fake_cifar10_dir, DIVIDEMIX, extra_data=TWO_VIEWS))],
                  ref, timeout=600))
    config = str(write_config(run, fake_cifar10_dir, DIVIDEMIX, extra_data=TWO_VIEWS))
    # two optimiser steps per batch, 12 batches per epoch: step 34 is batch 5 of epoch 1 (after the division);
    # the newest checkpoint is then last-step.ckpt of step 30, mid-epoch
    assert train(["fit", "--config", config, *kill_callback(34, "SIGKILL")], run, timeout=600).returncode == -9
    ckpt = torch.load(run_dir(run) / "checkpoints" / "last-step.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 30 and ckpt["epoch"] == 1 and ckpt["dividemix"]["division_epoch"] == 1
    checked(train(["fit", "--config", config, "--ckpt_path", "last"], run, timeout=600))
    (w_ref, s_ref), (w_run, s_run) = final_weights(ref), final_weights(run)
    assert s_ref == s_run == 48
    differ = [k for k in w_ref if not torch.equal(w_ref[k], w_run[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"


@pytest.mark.slow
def test_dividemix_under_two_process_ddp_gathers_every_samples_loss(fake_cifar10_dir, tmp_path):
    config = write_config(tmp_path, fake_cifar10_dir, DIVIDEMIX, max_epochs=2,
                          extra_data={"val_size": 101, **TWO_VIEWS})
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", ACCELERATOR,
           "--trainer.callbacks+=dividemix_probe.DumpDivision", f"--trainer.callbacks.folder={tmp_path / 'view'}"]
    checked(train(["fit", "--config", str(config), *ddp], tmp_path, timeout=600))
    ranks = [json.loads((tmp_path / "view" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["losses"] == ranks[1]["losses"] and ranks[0]["clean_prob"] == ranks[1]["clean_prob"]
    assert ranks[0]["division_epoch"] == 1
    # the gathered losses are those of the whole training set, computed here in one process
    ckpt = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model = DivideMix(CNN(n_outputs=10, width=0.125))
    model.load_state_dict(ckpt["state_dict"])
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=32, val_size=101, noise_type="symmetric",
                      noise_rate=0.2, noise_seed=0)
    dm.setup("fit")
    gathered = torch.tensor(ranks[0]["losses"])
    x = dm.eval_transform(dm.training_set_images(dm.train_indices))
    for k, net in enumerate((model.net1, model.net2)):
        net.eval()
        with torch.no_grad():
            expected = F.cross_entropy(net(x), dm.noisy_targets[dm.train_indices], reduction="none")
        assert torch.allclose(gathered[k, dm.train_indices], expected, atol=1e-4), f"network {k + 1}"
    outside = torch.ones(len(dm.noisy_targets), dtype=torch.bool)
    outside[dm.train_indices] = False
    assert (gathered[:, outside] == 0).all()


# ---------------------------------------------------------------- the paper's backbone
def test_preact_resnet18_has_the_reference_size_and_shortcut():
    from lightning_modules.backbones import PreActBlock, PreActResNet18

    net = PreActResNet18(n_outputs=10)
    # 11,171,274 parameters: counted on ResNet18(num_classes=10) of DivideMix's PreResNet.py
    assert sum(p.numel() for p in net.parameters()) == 11_171_274
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10) and net.feature_dim == 512
    # an identity block whose convolutions are zero passes on relu(bn1(x)) (the reference's shortcut), not x
    block = PreActBlock(4, 4).eval()
    for conv in (block.conv1, block.conv2):
        torch.nn.init.zeros_(conv.weight)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(block(x), torch.relu(x), atol=1e-4)


# Per noise level: tau from the paper's text (0.6 only at 90%); lambda_u as public DivideMix run scripts
# set it (the paper picks it per setting from {0, 25, 50, 150} on a small validation set).
@pytest.mark.parametrize("overlay, lambda_u, p_threshold", [
    ("cifar10_sym20", 0.0, 0.5), ("cifar10_sym50", 25.0, 0.5), ("cifar10_sym80", 25.0, 0.5),
    ("cifar10_sym90", 50.0, 0.6), ("cifar10_asym40", 0.0, 0.5), ("cifar100_sym20", 25.0, 0.5),
    ("cifar100_sym50", 150.0, 0.5), ("cifar100_sym80", 150.0, 0.5), ("cifar100_sym90", 150.0, 0.6),
])
def test_each_noise_level_config_holds_its_published_settings(overlay, lambda_u, p_threshold):
    from pathlib import Path

    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs" / "dividemix"
    stack = [yaml.safe_load((configs / f"{name}.yaml").read_text())
             for name in (overlay.split("_")[0], overlay)]
    settings = {**stack[0]["model"]["init_args"], **stack[1]["model"]["init_args"]}
    assert (settings["lambda_u"], settings["p_threshold"]) == (lambda_u, p_threshold)
