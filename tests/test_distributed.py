"""DDP on CPU (2 processes, gloo): same labels everywhere, disjoint shares, exact validation metrics.

``train.py fit --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu``
is run as a user would; a callback makes every process write what it trained
on (hashes of its noisy labels and split, the sample indices of its batches).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch.utils.data import DistributedSampler

from datamodules import NoisyCIFAR10
from datamodules.resumable import eval_sampler
from lightning_modules import Classifier
from process_group import ACCELERATOR
from resume_helpers import CLASSIFIER, checked, run_dir, train, write_config

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", ACCELERATOR]


def dump_args(folder) -> list[str]:
    return ["--trainer.callbacks+=fault_injection.DumpDataView", f"--trainer.callbacks.folder={folder}"]


def ddp_config(tmp, data_dir, model, **data):
    # 101 validation images: not a multiple of 2 processes, so a padding sampler would count one twice
    return write_config(tmp, data_dir, model, max_epochs=1, extra_data={"val_size": 101, **data})


def read_ranks(folder) -> list[dict]:
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


def assert_same_labels_and_disjoint_shares(ranks: list[dict], train_indices: torch.Tensor) -> None:
    for key in ("noisy_targets", "train_indices", "val_indices"):
        assert ranks[0][key] == ranks[1][key], f"{key} differ between processes"
    seen = [set(r["seen_indices"]) for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # the distributed sampler splits the data
    assert seen[0] | seen[1] <= set(train_indices.tolist())


@pytest.fixture(scope="module")
def classifier_ddp_run(fake_cifar10_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    config = ddp_config(tmp, fake_cifar10_dir, CLASSIFIER)
    checked(train(["fit", "--config", str(config), *DDP, *dump_args(tmp / "view")], tmp, timeout=400))
    return tmp


def datamodule(fake_cifar10_dir, **kw) -> NoisyCIFAR10:
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=32, val_size=101, noise_type="symmetric",
                      noise_rate=0.2, noise_seed=0, **kw)
    dm.setup("fit")
    return dm


def test_every_process_trains_on_the_same_labels_and_its_own_share(classifier_ddp_run, fake_cifar10_dir):
    ranks = read_ranks(classifier_ddp_run / "view")
    dm = datamodule(fake_cifar10_dir)
    assert_same_labels_and_disjoint_shares(ranks, dm.train_indices)
    from fault_injection import digest

    assert ranks[0]["noisy_targets"] == digest(dm.noisy_targets)  # = a single-process draw from the seeds
    assert [r["strategy"] for r in ranks] == ["DDPStrategy"] * 2
    assert [r["checkpoint_io"] for r in ranks] == ["AtomicCheckpointIO"] * 2
    assert ranks[0]["parameters"] == ranks[1]["parameters"]  # gradients averaged across processes
    assert ranks[0]["parameters"] != ranks[0]["initial_parameters"]  # ... and not equal for want of training


def test_two_process_validation_accuracy_equals_the_whole_set_value(classifier_ddp_run, fake_cifar10_dir):
    results = json.loads((run_dir(classifier_ddp_run) / "test_results.json").read_text())
    ddp_val_acc = results["test_best"]["val_acc"]  # logged by the 2-process run (1 epoch: last = best)

    ckpt = torch.load(run_dir(classifier_ddp_run) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    from lightning_modules.backbones import CNN

    model = Classifier(CNN(n_outputs=10, width=0.125))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    dm = datamodule(fake_cifar10_dir)
    correct = total = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():  # one process: every validation image exactly once
            batch = dm.eval_transform(batch["image"]), batch["target"]
            correct += int((model(batch[0]).argmax(1) == batch[1]).sum())
            total += len(batch[1])
    assert total == 101
    assert ddp_val_acc == pytest.approx(correct / total, abs=1e-6)


def test_eval_sampler_visits_every_image_once_where_a_distributed_sampler_pads():
    data = list(range(101))
    shares = [list(eval_sampler(data, 2, r)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == data
    padded = [list(DistributedSampler(data, 2, r, shuffle=False)) for r in (0, 1)]
    assert len(padded[0] + padded[1]) == 102  # why the default would bias a 2-process val/acc
    assert eval_sampler(data, 1, 0) is None


MODULES = {
    "coteaching": (
        {"class_path": "lightning_modules.coteaching.CoTeaching",
         "init_args": {"backbone": CLASSIFIER["init_args"]["backbone"], "forget_rate": 0.2, "num_gradual": 1,
                       "epoch_decay_start": 1}},
        {},
    ),
    "simclr": (
        {"class_path": "lightning_modules.simclr.SimCLR",
         "init_args": {"backbone": CLASSIFIER["init_args"]["backbone"], "projection_dim": 16}},
        {"augmentation": "simclr"},
    ),
    "meta_weight_net": (
        {"class_path": "lightning_modules.MetaWeightNet",
         "init_args": {"backbone": CLASSIFIER["init_args"]["backbone"],
                       "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}}},
        {"meta_size": 2},
    ),
}


# Meta-Weight-Net's weighting net gets its gradient from a separate backward (the meta step), not from
# the loss of the real step: DDP must be told that some parameters are unused in a backward pass.
STRATEGY = {"meta_weight_net": "ddp_find_unused_parameters_true"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODULES))
def test_other_modules_run_under_ddp_with_the_same_labels(name, fake_cifar10_dir, tmp_path):
    model, data = MODULES[name]
    config = ddp_config(tmp_path, fake_cifar10_dir, model, **data)
    ddp = [a if a != "ddp" else STRATEGY.get(name, "ddp") for a in DDP]
    checked(train(["fit", "--config", str(config), *ddp, *dump_args(tmp_path / "view")], tmp_path, timeout=400))
    dm = datamodule(fake_cifar10_dir, **data)
    ranks = read_ranks(tmp_path / "view")
    assert_same_labels_and_disjoint_shares(ranks, dm.train_indices)
    # the processes trained on different samples: identical weights afterwards mean that every gradient
    # (the weighting net's meta-gradient included) was averaged across them
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    unchanged = [k for k, h in ranks[0]["parameters"].items() if ranks[0]["initial_parameters"][k] == h]
    assert not unchanged, f"never trained, so equal trivially: {unchanged}"
    saved = yaml.safe_load((run_dir(tmp_path) / "config.yaml").read_text())
    assert saved["trainer"]["strategy"] == STRATEGY.get(name, "ddp")


def test_a_finished_run_destroys_the_process_group_it_ran_in(fake_cifar10_dir, tmp_path, monkeypatch):
    """Left to interpreter exit, gloo's threads can abort the process after a finished DDP run (exit -6)."""
    import sys

    import train

    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1),
                                         rank=0, world_size=1)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    try:
        config = write_config(tmp_path, fake_cifar10_dir, CLASSIFIER, max_epochs=1)
        train.main(["fit", "--config", str(config), "--trainer.limit_train_batches", "2",
                    "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"])
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
