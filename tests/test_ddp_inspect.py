"""Two processes (gloo, CPU) with configs/inspect.yaml stacked on a method's config.

Each run is ``train.py fit`` as a user types it, in its own process group with a
hard timeout (``process_group.train_in_group``): a collective that only some
processes enter hangs for ever, and SIGTERM does not end it. Every process
dumps its parameters and optimiser states (``ddp_probe.DumpState``); the tests
compare them bit for bit and check that what the callbacks wrote covers the
whole evaluation set, not one process's share.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from process_group import ACCELERATOR, REPO, train_in_group

N_TEST = 200  # tests/fake_cifar.py
# s; a finished 1-epoch 2-process run took 45 s on a 2-core machine, up to 4 min under heavy load
HARD_TIMEOUT = 480
DDP = ["--trainer.accelerator", ACCELERATOR, "--trainer.devices", "2", "--trainer.strategy", "ddp",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TINY = ["--data.init_args.download", "false", "--data.init_args.train_subset", "null",
        "--data.init_args.val_size", "100", "--data.init_args.batch_size", "32",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"]


def fit_two_processes(tmp: Path, data_dir: Path, configs: list[str], extra: list[str] = (),
                      timeout: float = HARD_TIMEOUT) -> Path:
    """Fit with 2 processes in ``tmp``; return the run folder (the only ``runs/*/version_*``)."""
    args = ["fit"]
    for c in [*configs, "inspect.yaml"]:
        args += ["--config", str(REPO / "configs" / c)]
    args += ["--data.init_args.data_dir", str(data_dir), *TINY, *DDP,
             "--trainer.callbacks+=ddp_probe.DumpState", f"--trainer.callbacks.folder={tmp / 'state'}", *extra]
    proc = train_in_group(args, tmp, timeout=timeout)
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    (run,) = (tmp / "runs").glob("*/version_*")
    return run


def rank_states(tmp: Path) -> list[dict]:
    # on the CPU: on CUDA each rank saved from its own device
    states = [torch.load(tmp / "state" / f"rank{r}.pt", map_location="cpu", weights_only=False) for r in (0, 1)]
    assert [s["world_size"] for s in states] == [2, 2]
    return states


def assert_equal_nested(a, b, where: str = "") -> None:
    """Bit-identical tensors (and equal plain values) through dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"differs between processes: {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"differs between processes: {where}: {a!r} vs {b!r}"


def assert_replicas_identical(states: list[dict]) -> None:
    """Same weights and optimiser states everywhere, after each process trained on its own samples."""
    for epoch in zip(*(s["seen_per_epoch"] for s in states)):  # each epoch: disjoint shares
        seen = [set(indices) for indices in epoch]
        assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert_equal_nested(states[0]["parameters"], states[1]["parameters"], "parameters")
    assert_equal_nested(states[0]["optimizers"], states[1]["optimizers"], "optimizers")
    assert any(opt["state"] for opt in states[0]["optimizers"]), "no optimiser ever stepped"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_noise_diagnostics_cover_both_shares(run: Path, states: list[dict]) -> None:
    saved = np.load(run / "per_sample_loss.npz")
    both = set(states[0]["seen_indices"]) | set(states[1]["seen_indices"])
    assert set(saved["index"].tolist()) == both


def assert_confusion_covers_the_test_set(run: Path) -> None:
    for prefix in ("test", "test_best"):
        counts = np.loadtxt(run / f"confusion_{prefix}.csv", delimiter=",", skiprows=1)
        assert counts.sum() == N_TEST, f"{prefix}: the matrix counts {counts.sum()} of {N_TEST} test images"


@pytest.fixture(scope="module")
def quick_inspect(fake_cifar10_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_quick_inspect")
    # tests/configs/tiny.yaml is what configs/quick.yaml was when the hang was reported (a plain fp32 CNN,
    # so that the mistakes test below can recompute the run's predictions exactly)
    return tmp, fit_two_processes(tmp, fake_cifar10_dir, ["../tests/configs/tiny.yaml"])


def test_quick_with_inspect_finishes_on_two_processes_and_the_replicas_agree(quick_inspect):
    """The inspection callbacks ask for the run folder on rank 0 only: that must not be a collective."""
    tmp, run = quick_inspect
    assert (run / "test_results.json").is_file() and (run / "filters_start.png").is_file()
    states = rank_states(tmp)
    assert_replicas_identical(states)
    assert_confusion_covers_the_test_set(run)
    assert_noise_diagnostics_cover_both_shares(run, states)


def test_confident_mistakes_are_the_top_of_the_whole_test_set(quick_inspect, fake_cifar10_dir):
    """The 16 shown are the most confident mistakes among all 200 test images, not among rank 0's 100."""
    from datamodules import NoisyCIFAR10
    from lightning_modules import Classifier
    from lightning_modules.backbones import CNN

    tmp, run = quick_inspect
    model = Classifier(CNN(n_outputs=10, width=0.25))  # tests/configs/tiny.yaml's network
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), batch_size=32, val_size=100)
    dm.setup("test")
    conf, pred, target, index = [], [], [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():  # one process: every test image once
            p = model(dm.eval_transform(batch["image"])).softmax(1)
            c, y = p.max(1)
            conf.append(c), pred.append(y), target.append(batch["target"]), index.append(batch["index"])
    conf, pred, target, index = map(torch.cat, (conf, pred, target, index))
    assert torch.equal(index, torch.arange(N_TEST))  # one process, in order: position = test index
    wrong = pred != target
    expected = conf[wrong].sort(descending=True).values[:16]
    rows = read_csv(run / "mistakes_test.csv")
    shown = torch.tensor([int(r["index"]) for r in rows])
    assert len(shown) == 16 and len(set(shown.tolist())) == 16
    assert wrong[shown].all()  # each one is a mistake of this checkpoint
    # the 16 highest confidences among ALL mistakes (values, not indices: near-ties may swap places)
    assert torch.tensor([float(r["confidence"]) for r in rows]) == pytest.approx(expected, abs=1e-5)
    assert conf[shown] == pytest.approx(expected, abs=1e-5)
    assert {i % 2 for i in shown.tolist()} == {0, 1}  # both processes' shares (even / odd positions) appear


TINY_CNN = ["--model.init_args.backbone", "lightning_modules.backbones.CNN",
            "--model.init_args.backbone.init_args.n_outputs", "10",
            "--model.init_args.backbone.init_args.width", "0.125"]

# method -> (config stack, extra arguments)
MATRIX = {
    "coteaching": (["coteaching/cifar10.yaml"], [*TINY_CNN, "--model.init_args.epoch_decay_start", "1"]),
    # co-teaching+ with forget_rate: auto (estimated at the start of epoch 2), and on the first batch an
    # empty selection on rank 1 only (ddp_probe.CoTeachingPlusAgreeingOnRank1)
    "coteaching_plus_auto": (["coteaching/cifar10.yaml"], [
        "--model", "ddp_probe.CoTeachingPlusAgreeingOnRank1", *TINY_CNN, "--model.init_args.mode", "coteaching_plus",
        "--model.init_args.forget_rate", "auto", "--model.init_args.auto_warmup_epochs", "1",
        "--model.init_args.epoch_decay_start", "2", "--trainer.max_epochs", "2"]),
    # the weighting net gets its gradient from the meta step's separate backward: DDP must allow
    # parameters unused in the other one
    "meta_weight_net": (["mwnet/base.yaml"], [
        *TINY_CNN, "--data.init_args.meta_size", "2", "--model.init_args.milestones", "[1]",
        "--trainer.strategy", "ddp_find_unused_parameters_true"]),
    "simclr": (["simclr/cpu_cifar10.yaml"], ["--model.init_args.warmup_epochs", "0"]),
}


@pytest.mark.slow
@pytest.mark.timeout(1300)
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_every_method_with_inspect_on_two_processes(name, fake_cifar10_dir, tmp_path):
    configs, extra = MATRIX[name]
    # co-teaching runs two networks, 2 epochs and two test passes: minutes on a loaded 2-core machine
    run = fit_two_processes(tmp_path, fake_cifar10_dir, configs, extra, timeout=1200)
    states = rank_states(tmp_path)
    assert_replicas_identical(states)
    if name == "simclr":  # self-supervised: no classification test, no per-sample loss
        return
    assert_confusion_covers_the_test_set(run)
    assert_noise_diagnostics_cover_both_shares(run, states)
    if name == "coteaching_plus_auto":
        rates = [s["forget_rate"] for s in states]
        assert rates[0] is not None and rates[0] == rates[1], f"each process estimated its own rate: {rates}"
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert ckpt["coteaching"]["forget_rate"] == rates[0]
