"""DivideMix's pure pieces against values worked out by hand (in the comments) or by an
independent reference (a hand-written EM for the mixture, numpy for the Beta draw)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_modules import dividemix_math as dm


def test_normalise_losses_scales_to_unit_range():
    assert dm.normalise_losses(torch.tensor([2.0, 4.0, 6.0, 3.0])).tolist() == pytest.approx([0, 0.5, 1, 0.25])
    assert dm.normalise_losses(torch.tensor([1.0, 1.0])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="non-finite"):
        dm.normalise_losses(torch.tensor([1.0, float("nan"), 2.0]))


def reference_em(x: np.ndarray, iters: int = 500, reg: float = 5e-4) -> np.ndarray:
    """A plain EM for two 1-D Gaussians (the textbook updates): posterior of the low-mean component."""
    mu, var, w = np.array([0.25, 0.75]), np.array([0.05, 0.05]), np.array([0.5, 0.5])
    for _ in range(iters):
        dens = w * np.exp(-((x[:, None] - mu) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)
        r = dens / dens.sum(1, keepdims=True)
        nk = r.sum(0)
        w, mu = nk / len(x), (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + reg
    return r[:, int(np.argmin(mu))]


def test_gmm_clean_probability_is_the_low_loss_component_posterior():
    # two groups of normalised losses symmetric about 0.5, plus two samples in between
    low, high = [0.0, 0.1, 0.2] * 30, [0.8, 0.9, 1.0] * 30
    x = torch.tensor(low + high + [0.45, 0.55], dtype=torch.float64)
    prob = dm.gmm_clean_probability(x, seed=0)
    assert prob.shape == (182,)
    assert (prob[:90] > 0.99).all() and (prob[90:180] < 0.01).all()  # the low-loss group is the clean one
    # symmetric data -> symmetric mixture: the two middle samples' posteriors add up to 1, the lower one > 0.5
    assert prob[180] + prob[181] == pytest.approx(1.0, abs=1e-3) and prob[180] > 0.5
    assert prob.numpy() == pytest.approx(reference_em(x.numpy()), abs=1e-3)
    # the split takes strictly more than the threshold
    assert dm.split_clean(torch.tensor([0.2, 0.5, 0.51, 0.9]), 0.5).tolist() == [False, False, True, True]


def test_gmm_clean_probability_on_skewed_losses_matches_an_independent_em():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(300, generator=g, dtype=torch.float64) * 0.3
    noisy = 0.6 + torch.rand(100, generator=g, dtype=torch.float64) * 0.4
    x = dm.normalise_losses(torch.cat([clean, noisy]))
    prob = dm.gmm_clean_probability(x, seed=0)
    ref = reference_em(x.numpy())
    assert np.abs(prob.numpy() - ref).max() < 0.02  # sklearn stops after <= 10 iterations (tol 1e-2)
    assert torch.equal(prob, dm.gmm_clean_probability(x, seed=0))  # seeded: the same on every process


def test_gmm_clean_probability_without_spread_or_with_bad_input():
    assert dm.gmm_clean_probability(torch.zeros(5)).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="at least 2"):
        dm.gmm_clean_probability(torch.tensor([0.3]))
    with pytest.raises(ValueError, match="p_threshold"):
        dm.split_clean(torch.tensor([0.5]), 1.5)


def test_sharpen_by_hand():
    # [0.2, 0.8] ** 2 = [0.04, 0.64], / 0.68
    assert dm.sharpen(torch.tensor([[0.2, 0.8]]), 0.5).tolist()[0] == pytest.approx([0.04 / 0.68, 0.64 / 0.68])
    assert dm.sharpen(torch.tensor([[0.2, 0.8]]), 1.0).tolist()[0] == pytest.approx([0.2, 0.8])
    with pytest.raises(ValueError, match="T must be > 0"):
        dm.sharpen(torch.tensor([[0.5, 0.5]]), 0.0)


def test_co_refine_by_hand():
    views = [torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([[0.2, 0.8], [0.2, 0.8]])]  # mean [0.4, 0.6]
    given = torch.tensor([0, 0])
    w = torch.tensor([0.5, 1.0])
    out = dm.co_refine(views, given, w, temperature=0.5)
    # w = 0.5: 0.5 * [1, 0] + 0.5 * [0.4, 0.6] = [0.7, 0.3] -> squared [0.49, 0.09] / 0.58
    assert out[0].tolist() == pytest.approx([0.49 / 0.58, 0.09 / 0.58])
    assert out[1].tolist() == pytest.approx([1.0, 0.0])  # a certainly clean label is kept as it is
    # w = 0: the network's own prediction, sharpened: [0.16, 0.36] / 0.52
    assert dm.co_refine(views, given, torch.zeros(2), 0.5)[0].tolist() == pytest.approx([0.16 / 0.52, 0.36 / 0.52])


def test_co_guess_by_hand():
    views = [torch.tensor([[0.5, 0.5]]), torch.tensor([[0.7, 0.3]]), torch.tensor([[0.9, 0.1]]),
             torch.tensor([[0.3, 0.7]])]  # mean [0.6, 0.4] -> squared [0.36, 0.16] / 0.52
    assert dm.co_guess(views, 0.5)[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])


def test_mixup_by_hand():
    inputs = torch.tensor([[1.0], [2.0], [3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    x, t = dm.mixup(inputs, targets, 0.7, torch.tensor([2, 0, 1]))
    # 0.7 * [1, 2, 3] + 0.3 * [3, 1, 2]
    assert x.flatten().tolist() == pytest.approx([1.6, 1.7, 2.7])
    assert t.flatten().tolist() == pytest.approx([0.85, 0.15, 0.3, 0.7, 0.35, 0.65])


def test_mixup_lambda_is_the_larger_of_l_and_1_minus_l():
    g = torch.Generator().manual_seed(0)
    draws = np.array([dm.mixup_lambda(1.0, g) for _ in range(4000)])
    assert draws.min() >= 0.5 and draws.max() <= 1.0
    # Beta(1, 1) is uniform: E[max(U, 1 - U)] = 3/4, and max(U, 1-U) is uniform on [0.5, 1]
    assert draws.mean() == pytest.approx(0.75, abs=0.01)
    assert np.mean(draws < 0.75) == pytest.approx(0.5, abs=0.03)
    # Beta(4, 4) against numpy's sampler (an independent implementation)
    ref = np.random.default_rng(0).beta(4, 4, 20000)
    ref = np.maximum(ref, 1 - ref)
    ours = np.array([dm.mixup_lambda(4.0, g) for _ in range(4000)])
    assert ours.mean() == pytest.approx(ref.mean(), abs=0.01) and ours.std() == pytest.approx(ref.std(), abs=0.01)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dm.mixup_lambda(0.0)


@pytest.mark.parametrize("epoch, expected", [(5, 0.0), (10, 0.0), (10.5, 25 * 0.5 / 16), (18, 12.5), (26, 25.0),
                                             (200, 25.0)])
def test_linear_rampup_by_hand(epoch, expected):
    assert dm.linear_rampup(epoch, 10, 25.0) == pytest.approx(expected)


def test_semi_losses_by_hand():
    logits_x = torch.tensor([[0.0, 0.0]])
    targets_x = torch.tensor([[1.0, 0.0]])
    logits_u = torch.tensor([[0.0, math.log(3.0)]])  # softmax [0.25, 0.75]
    targets_u = torch.tensor([[0.0, 1.0]])
    lx, lu = dm.semi_losses(logits_x, targets_x, logits_u, targets_u)
    assert lx.item() == pytest.approx(math.log(2.0))
    assert lu.item() == pytest.approx((0.25 ** 2 + 0.25 ** 2) / 2)  # mean over samples and classes
    empty = torch.zeros(0, 2, requires_grad=True)
    lx, lu = dm.semi_losses(empty, torch.zeros(0, 2), logits_u, targets_u)
    assert lx.item() == 0.0 and lx.requires_grad


def test_uniform_prior_penalty_by_hand():
    assert dm.uniform_prior_penalty(torch.zeros(4, 10)).item() == pytest.approx(0.0, abs=1e-7)
    # mean prediction [0.75, 0.25]: 0.5 * ln(0.5 / 0.75) + 0.5 * ln(0.5 / 0.25)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    logits = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    assert dm.uniform_prior_penalty(logits).item() == pytest.approx(expected)


def test_confidence_penalty_by_hand():
    assert dm.confidence_penalty(torch.zeros(3, 2)).item() == pytest.approx(-math.log(2.0))
    # p = [0.75, 0.25]: 0.75 ln 0.75 + 0.25 ln 0.25; averaged with a uniform row
    p = 0.75 * math.log(0.75) + 0.25 * math.log(0.25)
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    assert dm.confidence_penalty(logits).item() == pytest.approx((p - math.log(2.0)) / 2)
