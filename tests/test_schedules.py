"""LR schedules: cosine to zero, linear warm-up, multistep factors, and the LambdaLR built from them."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.schedules import build_scheduler, check_schedule, lr_factor

SPE = 10  # steps per epoch
TOTAL = 100  # 10 epochs


def test_constant_is_one():
    assert [lr_factor(s, TOTAL, SPE) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_cosine_from_one_to_zero():
    f = [lr_factor(s, TOTAL, SPE, "cosine") for s in range(TOTAL + 1)]
    assert f[0] == 1.0
    assert f[50] == pytest.approx(0.5)
    assert f[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f[TOTAL - 1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))  # ~2.5e-4
    assert f[TOTAL - 1] < 1e-3 and f[TOTAL] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f, f[1:]))


def test_linear_warmup_then_cosine():
    warm = 2  # epochs -> 20 steps
    f = [lr_factor(s, TOTAL, SPE, "cosine", warmup_epochs=warm) for s in range(TOTAL + 1)]
    assert f[:20] == pytest.approx([(s + 1) / 20 for s in range(20)])  # linear, reaching 1 at the last warm-up step
    assert f[20] == 1.0  # cosine starts after the warm-up, over the 80 remaining steps
    assert f[60] == pytest.approx(0.5) and f[TOTAL] == pytest.approx(0.0, abs=1e-12)
    # fractional warm-up of half an epoch
    assert [lr_factor(s, TOTAL, SPE, "constant", warmup_epochs=0.5) for s in range(6)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    )


def test_multistep_factors_at_milestones():
    f = {s: lr_factor(s, TOTAL, SPE, "multistep", milestones=(3, 6), gamma=0.1) for s in (0, 29, 30, 59, 60, 99)}
    assert f[0] == f[29] == 1.0
    assert f[30] == pytest.approx(0.1) and f[59] == pytest.approx(0.1)
    assert f[60] == pytest.approx(0.01) and f[99] == pytest.approx(0.01)


def test_built_scheduler_drives_the_optimizer_per_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    cfg = build_scheduler(opt, total_steps=100, max_epochs=10, schedule="multistep", milestones=(6,), gamma=0.1)
    assert cfg["interval"] == "step" and cfg["frequency"] == 1
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cfg["scheduler"].step()
    assert lrs[59] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.01)

    opt = torch.optim.SGD([p], lr=0.2)
    sched = build_scheduler(opt, 40, 4, "cosine", warmup_epochs=1)["scheduler"]
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.02) and lrs[9] == pytest.approx(0.2)
    assert lrs[-1] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))


@pytest.mark.parametrize(
    "args, message",
    [
        (("onecycle", 0, (), 0.1), "unknown lr schedule 'onecycle'; allowed: constant, cosine, multistep, linear"),
        (("linear", 0, (), 0.1, -0.1), r"warmup_start_factor must be in \[0, 1\], got -0.1"),
        (("linear", 0, (), 0.1, 0.2, 1.5), r"final_lr_factor must be in \[0, 1\], got 1.5"),
        (("cosine", -1, (), 0.1), "warmup_epochs must be >= 0, got -1"),
        (("multistep", 0, (5, -2), 0.1), r"milestones must be >= 0 epochs, got \[5, -2\]"),
        (("multistep", 0, (5,), 0.0), r"gamma must be in \(0, 1\], got 0.0"),
        (("multistep", 0, (5,), 2.0), r"gamma must be in \(0, 1\], got 2.0"),
    ],
)
def test_bad_schedule_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        check_schedule(*args)
    with pytest.raises(ValueError):
        lr_factor(0, 10, 1, "onecycle")


def test_linear_schedule_is_airbenchs_trapezoid():
    """airbench94: 100 steps, warm-up over 23 steps from 0.2 to 1, then straight down to 0.07 at the end."""
    f = {s: lr_factor(s, 100, 10, "linear", warmup_epochs=2.3, warmup_start_factor=0.2, final_lr_factor=0.07)
         for s in (0, 10, 23, 50, 100)}
    assert f[0] == pytest.approx(0.2)
    assert f[10] == pytest.approx(0.2 + 0.8 * 10 / 23)
    assert f[23] == pytest.approx(1.0)
    assert f[50] == pytest.approx(0.07 + 0.93 * (1 - 27 / 77))
    assert f[100] == pytest.approx(0.07)


def test_cosine_ends_at_final_factor():
    assert lr_factor(100, 100, 10, "cosine", final_lr_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, "cosine", final_lr_factor=0.1) == pytest.approx(0.1 + 0.9 * 0.5)


# ------------------------------------------- edges pinned by mutation testing (docs/mutation.md)
def _lrs(sched_cfg: dict, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched_cfg["scheduler"].step()
    return lrs


def _sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_defaults_constant_no_warmup_gamma_one_tenth():
    assert lr_factor(30, TOTAL, SPE, "multistep", milestones=(3,)) == pytest.approx(0.1)
    opt = _sgd()
    assert _lrs(build_scheduler(opt, 100, 10), opt, 100) == [1.0] * 100  # constant, no warm-up
    opt = _sgd()
    lrs = _lrs(build_scheduler(opt, 100, 10, "multistep", milestones=(6,)), opt, 100)
    assert lrs[59] == 1.0 and lrs[60] == pytest.approx(0.1)


def test_build_scheduler_passes_its_gamma():
    opt = _sgd()
    lrs = _lrs(build_scheduler(opt, 100, 10, "multistep", milestones=(6,), gamma=0.5), opt, 100)
    assert lrs[60] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.5)


def test_cosine_stays_at_zero_past_the_planned_steps_and_handles_one_step():
    assert lr_factor(150, TOTAL, SPE, "cosine") == pytest.approx(0.0, abs=1e-12)  # e.g. a longer resumed run
    assert lr_factor(0, 1, 1, "cosine") == 1.0 and lr_factor(1, 1, 1, "cosine") == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("total, epochs, step, want", [
    (10, 10, 3, 0.1),    # one step per epoch: step 3 is epoch 3
    (105, 10, 30, 0.1),  # 105 // 10 = 10 steps per epoch (whole steps): step 30 is epoch 3
    (10, 1, 5, 1.0),     # one epoch of 10 steps: step 5 is still epoch 0
])
def test_steps_per_epoch_is_whole_steps(total, epochs, step, want):
    opt = _sgd()
    lrs = _lrs(build_scheduler(opt, total, epochs, "multistep", milestones=(3,) if epochs > 1 else (1,)), opt, total)
    assert lrs[step] == pytest.approx(want)
    assert lr_factor(3, 10, 1, "multistep", milestones=(3,)) == pytest.approx(0.1)


def test_boundaries_of_the_accepted_arguments():
    check_schedule("constant", 0, (), 0.1)  # every allowed name passes
    check_schedule("multistep", 0, (0,), 1.0)  # a milestone at epoch 0 and gamma 1 are allowed
    check_schedule("multistep", 0, (5,), 0.5)
    allowed = "constant, cosine, multistep, linear"
    with pytest.raises(ValueError, match=f"^unknown lr schedule 'onecycle'; allowed: {allowed}$"):
        lr_factor(0, 10, 1, "onecycle")
