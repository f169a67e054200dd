"""Kill-and-resume under DDP (2 CPU processes, gloo): the resumed run ends where an uninterrupted one ends.

Both processes are SIGKILLed mid-epoch (``fault_injection.KillAtStep``); the same
command with ``--ckpt_path last`` resumes from ``last-step.ckpt`` (step 10, in the
middle of epoch 2) and must end with bit-identical weights and optimiser states.
"""

from __future__ import annotations

import pytest
import torch

from process_group import ACCELERATOR, train_in_group
from resume_helpers import CLASSIFIER, kill_callback, run_dir, write_config

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", ACCELERATOR]
TIMEOUT = 900  # s per run: minutes on a loaded 2-core machine


def fit(tmp, data_dir, *extra):
    config = write_config(tmp, data_dir, CLASSIFIER, max_epochs=2)  # 6 steps per epoch and process
    return train_in_group(["fit", "--config", str(config), *DDP, *extra], tmp, timeout=TIMEOUT)


def last_checkpoint(tmp) -> dict:
    return torch.load(run_dir(tmp) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_two_process_sigkill_then_resume_equals_the_uninterrupted_run(fake_cifar10_dir, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    assert fit(whole, fake_cifar10_dir).returncode == 0
    killed = fit(broken, fake_cifar10_dir, *kill_callback(11, "SIGKILL"))
    assert killed.returncode != 0 and not (run_dir(broken) / "test_results.json").exists()
    step_ckpt = torch.load(run_dir(broken) / "checkpoints" / "last-step.ckpt", map_location="cpu",
                           weights_only=False)
    assert step_ckpt["global_step"] == 10  # mid-epoch 2: the resume has to restore the data position
    resumed = fit(broken, fake_cifar10_dir, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a, b = last_checkpoint(whole), last_checkpoint(broken)
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for pid, state in sa["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][pid][name])), (pid, name)
