"""Losses against hand-computed values: GCE (Zhang & Sabuncu 2018) and CE with label smoothing."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules import Classifier
from lightning_modules.backbones import LeNet
from lightning_modules.losses import classification_loss, cross_entropy, generalized_cross_entropy

LOGITS = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-3.0, 1.0, 4.0]]
TARGETS = [0, 2, 1]


def softmax_row(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def p_true() -> list[float]:
    return [softmax_row(r)[t] for r, t in zip(LOGITS, TARGETS)]


@pytest.mark.parametrize("q", [0.7, 0.3, 1.0])
def test_gce_equals_the_formula(q):
    want = [(1 - p ** q) / q for p in p_true()]
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS)
    got = generalized_cross_entropy(logits, targets, q, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=1e-6)
    assert generalized_cross_entropy(logits, targets, q).item() == pytest.approx(sum(want) / 3, rel=1e-6)
    assert generalized_cross_entropy(logits, targets, q, reduction="sum").item() == pytest.approx(sum(want), rel=1e-6)


def test_gce_q1_is_one_minus_p_and_tends_to_ce_as_q_goes_to_zero():
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS)
    torch.testing.assert_close(
        generalized_cross_entropy(logits, targets, 1.0, "none"), 1 - torch.tensor(p_true()), rtol=1e-6, atol=1e-6
    )
    ce = [-math.log(p) for p in p_true()]
    gaps = []
    for q in (1e-1, 1e-2, 1e-3, 1e-4):
        got = generalized_cross_entropy(logits, targets, q, "none")
        gaps.append(float((got - torch.tensor(ce)).abs().max()))
    assert gaps == sorted(gaps, reverse=True)  # monotone approach
    assert gaps[-1] < 1e-3
    # first-order term: (1 - e^{q log p})/q = -log p - q (log p)^2 / 2 + O(q^2)
    q = 1e-2
    second = [-math.log(p) - q * math.log(p) ** 2 / 2 for p in p_true()]
    torch.testing.assert_close(generalized_cross_entropy(logits, targets, q, "none"), torch.tensor(second),
                               rtol=0, atol=1e-3)


def test_gce_gradients_are_finite_and_match_the_analytic_form():
    q = 0.7
    logits = torch.tensor([[60.0, -60.0, 0.0], [-80.0, 80.0, 0.0], [0.1, 0.2, 0.3]], requires_grad=True)
    targets = torch.tensor([1, 1, 2])  # first row: p_y ~ e^-120, a hopeless sample
    generalized_cross_entropy(logits, targets, q, "sum").backward()
    assert torch.isfinite(logits.grad).all()
    # dL/dz = -p_y^q (onehot - p): tiny for confident-wrong samples (the point of GCE)
    p = logits.detach().softmax(1)
    onehot = torch.nn.functional.one_hot(targets, 3).float()
    want = -(p.gather(1, targets[:, None]) ** q) * (onehot - p)
    torch.testing.assert_close(logits.grad, want, rtol=1e-5, atol=1e-7)
    assert logits.grad[0].abs().max() < 1e-20


def test_ce_with_label_smoothing_by_hand():
    eps = 0.1
    want = 0.0
    for row, t in zip(LOGITS, TARGETS):
        logp = [math.log(v) for v in softmax_row(row)]
        want += (1 - eps) * -logp[t] + eps * sum(-v for v in logp) / 3
    got = cross_entropy(torch.tensor(LOGITS), torch.tensor(TARGETS), label_smoothing=eps)
    assert got.item() == pytest.approx(want / 3, rel=1e-6)
    plain = classification_loss(torch.tensor(LOGITS), torch.tensor(TARGETS), "ce")
    assert plain.item() == pytest.approx(sum(-math.log(p) for p in p_true()) / 3, rel=1e-6)


def test_loss_errors_name_the_bad_value():
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS)
    for q in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=f"GCE q must be in \\(0, 1\\], got {q}"):
            generalized_cross_entropy(logits, targets, q)
    with pytest.raises(ValueError, match="unknown loss 'mae'; allowed: ce, gce"):
        classification_loss(logits, targets, "mae")
    with pytest.raises(ValueError, match="label_smoothing is only defined for the ce loss"):
        classification_loss(logits, targets, "gce", label_smoothing=0.1)
    with pytest.raises(ValueError, match="reduction must be mean, sum or none, got 'max'"):
        generalized_cross_entropy(logits, targets, 0.7, reduction="max")


def test_classifier_uses_the_configured_loss_and_checks_its_arguments():
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS)
    model = Classifier(backbone=LeNet(n_outputs=3), num_classes=3, loss="gce", gce_q=0.5)
    want = sum((1 - p ** 0.5) / 0.5 for p in p_true()) / 3
    assert model.loss(logits, targets).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss 'focal'; allowed: ce, gce"):
        Classifier(backbone=LeNet(), loss="focal")
    with pytest.raises(ValueError, match=r"gce_q must be in \(0, 1\], got 0.0"):
        Classifier(backbone=LeNet(), loss="gce", gce_q=0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.0"):
        Classifier(backbone=LeNet(), label_smoothing=1.0)


# ------------------------------------------- defaults and bounds pinned by mutation testing (docs/mutation.md)
def test_defaults_are_the_documented_ones():
    """Called without the optional arguments: GCE q = 0.7 (the paper's), CE without smoothing, mean."""
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS)
    gce = [(1 - p ** 0.7) / 0.7 for p in p_true()]
    ce = [-math.log(p) for p in p_true()]
    assert generalized_cross_entropy(logits, targets).item() == pytest.approx(sum(gce) / 3, rel=1e-6)
    assert cross_entropy(logits, targets).item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    assert classification_loss(logits, targets).item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    assert classification_loss(logits, targets, "gce").item() == pytest.approx(sum(gce) / 3, rel=1e-6)
    per_sample = classification_loss(logits, targets, "gce", reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor(gce), rtol=1e-6, atol=1e-6)


def test_check_loss_accepts_q_one_and_refuses_above():
    from lightning_modules.losses import check_loss

    check_loss("gce", 1.0)  # q = 1 is MAE (up to a factor 2): allowed
    for q in (1.5, 2.0):
        with pytest.raises(ValueError, match=rf"^gce_q must be in \(0, 1\], got {q}$"):
            check_loss("gce", q)
    with pytest.raises(ValueError, match="^label_smoothing is only defined for the ce loss$"):
        classification_loss(torch.tensor(LOGITS), torch.tensor(TARGETS), "gce", label_smoothing=0.1)
