"""Exact resume after a kill, labels never redrawn, atomic checkpoints, resumable data order.

The end-to-end tests kill a real ``train.py`` run (a callback sends SIGKILL or
SIGTERM to its own process after N steps), resume it with ``fit --ckpt_path
last`` and compare the final weights bit for bit with an uninterrupted run
(deterministic mode, CPU). 400 training images, batches of 32: 12 steps per
epoch, 2 epochs; ``PeriodicCheckpoint`` writes ``last-step.ckpt`` every 5 steps.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from datamodules.resumable import EpochShuffleSampler, ResumableDataLoader
from resume_helpers import (
    CLASSIFIER, REPO, checked, final_weights, kill_callback, run_dir, train, write_config,
)

COTEACHING = {
    "class_path": "lightning_modules.coteaching.CoTeaching",
    "init_args": {
        "backbone": {"class_path": "lightning_modules.backbones.CNN", "init_args": {"n_outputs": 10, "width": 0.125}},
        "forget_rate": 0.2, "num_gradual": 1, "epoch_decay_start": 1,
    },
}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference_classifier(fake_cifar10_dir, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reference")
    checked(train(["fit", "--config", str(write_config(tmp, fake_cifar10_dir, CLASSIFIER))], tmp))
    weights, step = final_weights(tmp)
    assert step == 24
    return weights


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(reference_classifier, fake_cifar10_dir, tmp_path):
    config = str(write_config(tmp_path, fake_cifar10_dir, CLASSIFIER))
    # SIGKILL at step 17 (epoch 1, batch 5): nothing runs after it; last-step.ckpt is from step 15
    killed = train(["fit", "--config", config, *kill_callback(17, "SIGKILL")], tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = torch.load(run_dir(tmp_path) / "checkpoints" / "last-step.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 15 and ckpt["epoch"] == 1  # a mid-epoch checkpoint
    labels_file = run_dir(tmp_path) / "noisy_labels.npz"
    labels_before = labels_file.read_bytes()

    # resuming with another noise_seed would train on other labels: refused before anything is overwritten
    refused = train(["fit", "--config", config, "--ckpt_path", "last", "--data.init_args.noise_seed", "5"], tmp_path)
    assert refused.returncode != 0
    assert "noise_seed" in refused.stderr and "never redrawn" in refused.stderr, refused.stderr[-2000:]
    assert labels_file.read_bytes() == labels_before

    resumed = checked(train(["fit", "--config", config, "--ckpt_path", "last"], tmp_path))
    assert re.search(r"Restored all states from the checkpoint at .*last-step.ckpt", resumed.stderr)  # newest
    assert "not resumable" not in resumed.stderr
    weights, step = final_weights(tmp_path)
    assert step == 24
    assert_same_weights(weights, reference_classifier)
    assert labels_file.read_bytes() == labels_before


@pytest.mark.slow
def test_sigterm_saves_the_interrupted_step_and_resumes_exactly(reference_classifier, fake_cifar10_dir, tmp_path):
    config = str(write_config(tmp_path, fake_cifar10_dir, CLASSIFIER))
    # SIGTERM at step 7: Lightning finishes the batch, raises SIGTERMException, PeriodicCheckpoint saves
    stopped = train(["fit", "--config", config, *kill_callback(7, "SIGTERM")], tmp_path)
    # SIGTERMException is a SystemExit without a code: the process exits 0, without train.py's test report
    assert "Received SIGTERM" in stopped.stderr and stopped.returncode == 0
    assert not (run_dir(tmp_path) / "test_results.json").exists()
    ckpt = torch.load(run_dir(tmp_path) / "checkpoints" / "last-step.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 7  # the interrupted step itself, not the periodic one (5)
    checked(train(["fit", "--config", config, "--ckpt_path", "last"], tmp_path))
    weights, step = final_weights(tmp_path)
    assert step == 24
    assert_same_weights(weights, reference_classifier)


@pytest.mark.slow
def test_coteaching_sigkill_then_resume_equals_uninterrupted_run(fake_cifar10_dir, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    checked(train(["fit", "--config", str(write_config(ref, fake_cifar10_dir, COTEACHING))], ref))
    config = str(write_config(run, fake_cifar10_dir, COTEACHING))
    # global_step counts optimiser steps: two per batch here, so step 34 = batch 17 (epoch 1, mid-epoch)
    assert train(["fit", "--config", config, *kill_callback(34, "SIGKILL")], run).returncode == -9
    checked(train(["fit", "--config", config, "--ckpt_path", "last"], run))
    (w_ref, s_ref), (w_run, s_run) = final_weights(ref), final_weights(run)
    assert s_ref == s_run == 48  # manual optimisation: two optimiser steps per batch
    assert_same_weights(w_run, w_ref)


@pytest.mark.slow
def test_slurm_requeue_signal_saves_an_hpc_checkpoint_that_the_requeued_job_resumes(
    reference_classifier, fake_cifar10_dir, tmp_path
):
    """configs/cluster/slurm.yaml on CPU with a fake SLURM: SIGUSR1 -> hpc_ckpt + ``scontrol requeue``;
    the pre-empted job is killed; the same command again (what the requeued job runs) resumes exactly."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "test", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "PATH": f"{bin_dir}:/usr/bin:/bin"}
    root = tmp_path / "root"
    command = [
        "fit", "--config", str(write_config(tmp_path, fake_cifar10_dir, CLASSIFIER)),
        "--config", str(REPO / "configs" / "cluster" / "slurm.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.default_root_dir", str(root),
    ]
    preempted = train([*command, *kill_callback(7, "SIGUSR1"), *kill_callback(8, "SIGKILL")], tmp_path, env=slurm)
    assert preempted.returncode == -9, preempted.stderr[-3000:]
    assert (root / "hpc_ckpt_1.ckpt").is_file()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    requeued = checked(train(command, tmp_path, env=slurm))
    assert re.search(r"Restored all states from the checkpoint at .*hpc_ckpt_1.ckpt", requeued.stderr)
    weights, step = final_weights(tmp_path)
    assert step == 24
    assert_same_weights(weights, reference_classifier)


# ---------------------------------------------------------------- data order
def test_epoch_shuffle_depends_only_on_seed_epoch_and_pass():
    data = list(range(50))
    a, b = EpochShuffleSampler(data, seed=3), EpochShuffleSampler(data, seed=3)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global RNG plays no part
    assert list(b) == first and sorted(first) == data
    assert list(a) != first  # a second pass in the same epoch (a cycled loader) gets a new order
    a.set_epoch(1)
    assert list(a) != first
    assert list(EpochShuffleSampler(data, seed=4)) != first


def test_two_process_shares_partition_the_single_process_order():
    data = list(range(50))
    full = EpochShuffleSampler(data, seed=0).permutation(2, 0)
    ranks = [EpochShuffleSampler(data, num_replicas=2, rank=r, seed=0) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    parts = [list(s) for s in ranks]
    assert parts[0] == full[0::2] and parts[1] == full[1::2]


def test_loader_state_resumes_the_same_pass_after_the_consumed_batches():
    data = torch.arange(100)

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=8, sampler=EpochShuffleSampler(data, seed=0), drop_last=True)

    first = loader()
    first.sampler.set_epoch(1)
    list(first)  # pass 0 of epoch 1
    it = iter(first)  # pass 1 (a cycled loader), interrupted after 5 batches
    consumed = [next(it).tolist() for _ in range(5)]
    state = first.state_dict()
    assert state == {"epoch": 1, "pass": 1, "batches": 5, "batch_size": 8}
    order = first.sampler.permutation(1, 1)
    expected = [order[i : i + 8] for i in range(0, 96, 8)]
    assert consumed == expected[:5]

    fresh = loader()
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)  # what Lightning does at the start of the resumed epoch
    assert [b.tolist() for b in fresh] == expected[5:]
    assert len(fresh) == 12  # Lightning counts the batches done itself; the length stays the epoch's


def test_loader_state_from_the_end_of_an_epoch_does_not_skip_the_next_epoch():
    data = torch.arange(40)
    loader = ResumableDataLoader(data, batch_size=8, sampler=EpochShuffleSampler(data, seed=0), drop_last=True)
    loader.load_state_dict({"epoch": 0, "pass": 0, "batches": 5, "batch_size": 8})
    loader.sampler.set_epoch(1)
    assert len([b for b in loader]) == 5


def test_loader_state_with_another_batch_size_is_refused():
    data = torch.arange(40)
    loader = ResumableDataLoader(data, batch_size=4, sampler=EpochShuffleSampler(data), drop_last=True)
    with pytest.raises(ValueError, match="batch_size 4.*batch_size 8"):
        loader.load_state_dict({"epoch": 0, "pass": 0, "batches": 2, "batch_size": 8})


# ------------------------------------------------------ atomic checkpoints
KILL_WHILE_SAVING = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from callbacks.atomic_checkpoint import AtomicCheckpointIO

    path, writer = sys.argv[1], sys.argv[2]

    def naive_save(checkpoint, path):  # what a plain open(path, "wb") + torch.save does
        with open(path, "wb") as f:
            torch.save(checkpoint, f)

    save = AtomicCheckpointIO().save_checkpoint if writer == "atomic" else naive_save
    save({"step": 1, "w": torch.arange(100_000)}, path)

    real_save = torch.save
    def dying_save(obj, f, *args, **kwargs):  # write half the bytes, then the job is killed
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = dying_save
    save({"step": 2, "w": torch.arange(100_000) * 2}, path)
    """
)


@pytest.mark.parametrize("writer", ["atomic", "naive"])
def test_kill_while_saving_leaves_the_previous_checkpoint_usable(writer, tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_WHILE_SAVING, str(path), writer], cwd=REPO, capture_output=True, text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    if writer == "naive":
        # control for the harness, not a test of project code: the kill really lands mid-write (half of
        # the second checkpoint's bytes), and that truncation is what torch.load cannot read back
        full = io.BytesIO()
        torch.save({"step": 2, "w": torch.arange(100_000) * 2}, full)
        assert path.stat().st_size == len(full.getvalue()) // 2
        with pytest.raises(RuntimeError, match="failed finding central directory"):
            torch.load(path, weights_only=True)
        return
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.arange(100_000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.")  # the killed partial, never renamed


def test_failed_save_removes_its_partial_file_and_keeps_the_old(tmp_path, monkeypatch):
    from callbacks.atomic_checkpoint import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"step": 1}, path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        io_.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_train_cli_installs_atomic_io_unless_the_user_names_a_checkpoint_io():
    from pytorch_lightning.plugins import TorchCheckpointIO
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from callbacks.atomic_checkpoint import AtomicCheckpointIO, with_atomic_checkpoint_io

    assert [type(p) for p in with_atomic_checkpoint_io(None)] == [AtomicCheckpointIO]
    slurm = SLURMEnvironment(auto_requeue=True)
    assert [type(p) for p in with_atomic_checkpoint_io(slurm)] == [SLURMEnvironment, AtomicCheckpointIO]
    mine = TorchCheckpointIO()
    assert with_atomic_checkpoint_io([mine]) == [mine]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    from callbacks.exact_resume import ExactResume

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = ExactResume().state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "s.pt")
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    ExactResume().load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
