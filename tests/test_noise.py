"""Noise models: transition matrices against hand-written ones, realised rates, determinism, mappings."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import NoisyCIFAR10, NoisyCIFAR100, noise

N = 50_000  # as many labels as the CIFAR training set
C = 10
CLEAN = torch.arange(N) % C  # 5,000 per class
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def within_sampling_error(observed: float, p: float, n: int, k: float = 4.0) -> bool:
    """|observed - p| <= k standard errors of a binomial proportion over n draws."""
    se = math.sqrt(p * (1 - p) / n)
    return abs(observed - p) <= k * se + 1e-12


# --------------------------------------------------------------- matrices
def test_transition_matrices_by_hand_for_four_classes():
    r = 0.2
    o = r / 3  # symmetric off-diagonal
    expected = {
        "clean": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        "symmetric": [[0.8, o, o, o], [o, 0.8, o, o], [o, o, 0.8, o], [o, o, o, 0.8]],
        "uniform": [[0.85, 0.05, 0.05, 0.05], [0.05, 0.85, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05],
                    [0.05, 0.05, 0.05, 0.85]],
        "pairflip": [[0.8, 0.2, 0, 0], [0, 0.8, 0.2, 0], [0, 0, 0.8, 0.2], [0.2, 0, 0, 0.8]],
    }
    for noise_type, want in expected.items():
        got = noise.transition_matrix(noise_type, r, 4)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), msg=noise_type)
    # asymmetric with a partial map: unmapped classes keep their label
    got = noise.transition_matrix("asymmetric", r, 4, {0: 1, 2: 0})
    want = torch.tensor([[0.8, 0.2, 0, 0], [0, 1, 0, 0], [0.2, 0, 0.8, 0], [0, 0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(got, want)


def test_cifar10_asymmetric_matrix_follows_the_class_names():
    r = 0.4
    name = {n: i for i, n in enumerate(CIFAR10_NAMES)}
    want = torch.eye(10, dtype=torch.float64)
    for src, dst in [("truck", "automobile"), ("bird", "airplane"), ("deer", "horse"), ("cat", "dog"), ("dog", "cat")]:
        want[name[src], name[src]] = 1 - r
        want[name[src], name[dst]] = r
    got = noise.transition_matrix("asymmetric", r, 10, noise.CIFAR10_ASYMMETRIC_MAP)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("noise_type", ["symmetric", "uniform", "pairflip", "asymmetric"])
def test_rows_sum_to_one(noise_type):
    class_map = noise.CIFAR10_ASYMMETRIC_MAP if noise_type == "asymmetric" else None
    t = noise.transition_matrix(noise_type, 0.45, 10, class_map)
    torch.testing.assert_close(t.sum(1), torch.ones(10, dtype=torch.float64))
    assert (t >= 0).all()


# ------------------------------------------------------------ realised rates
# fraction of labels that should end up *changed* for r, on balanced CIFAR-10-like labels
EXPECTED_CHANGED = {
    "symmetric": lambda r: r,
    "uniform": lambda r: r * (1 - 1 / C),  # the redraw gives the true class back 1/C of the time
    "pairflip": lambda r: r,
    "asymmetric": lambda r: r * 5 / 10,  # 5 of the 10 CIFAR-10 classes have a target
}


@pytest.mark.parametrize("noise_type", list(EXPECTED_CHANGED))
@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_expected_noise_rate_is_the_share_of_labels_the_matrix_changes(noise_type, rate):
    class_map = noise.CIFAR10_ASYMMETRIC_MAP if noise_type == "asymmetric" else None
    t = noise.transition_matrix(noise_type, rate, C, class_map)
    assert noise.expected_noise_rate(t, CLEAN) == pytest.approx(EXPECTED_CHANGED[noise_type](rate))


def test_expected_noise_rate_weighs_classes_by_their_frequency():
    t = torch.tensor([[0.6, 0.4], [0.0, 1.0]], dtype=torch.float64)  # only class 0 flips
    assert noise.expected_noise_rate(t, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.75 * 0.4)
    assert noise.expected_noise_rate(t, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.25 * 0.4)


@pytest.mark.parametrize("noise_type", list(EXPECTED_CHANGED))
@pytest.mark.parametrize("rate", [0.2, 0.45])
def test_realised_rate_and_matrix_match_r_on_50k_labels(noise_type, rate):
    class_map = noise.CIFAR10_ASYMMETRIC_MAP if noise_type == "asymmetric" else None
    draw = noise.apply_noise(CLEAN, noise_type, rate, C, seed=123, class_map=class_map)
    assert draw.noisy.dtype == torch.int64 and draw.noisy.shape == (N,)
    assert int(draw.noisy.min()) >= 0 and int(draw.noisy.max()) < C
    assert within_sampling_error(float(draw.selected.double().mean()), rate, N)
    changed = noise.actual_noise_rate(CLEAN, draw.noisy)
    assert within_sampling_error(changed, EXPECTED_CHANGED[noise_type](rate), N), (noise_type, changed)
    # every entry of the empirical matrix within 4 standard errors of T (5,000 labels per row)
    t = noise.transition_matrix(noise_type, rate, C, class_map)
    emp = noise.empirical_transition_matrix(CLEAN, draw.noisy, C)
    se = torch.sqrt(t * (1 - t) / (N // C))
    assert ((emp - t).abs() <= 4 * se + 1e-12).all(), (emp - t).abs().max()


def test_clean_noise_changes_nothing():
    draw = noise.apply_noise(CLEAN, "clean", 0.0, C, seed=0)
    assert torch.equal(draw.noisy, CLEAN) and not draw.selected.any()


def test_symmetric_never_keeps_the_true_label_and_uniform_does_one_in_c():
    sym = noise.apply_noise(CLEAN, "symmetric", 0.4, C, seed=1)
    assert sym.selected.sum() > 0
    assert (sym.noisy[sym.selected] != CLEAN[sym.selected]).all()
    assert torch.equal(sym.noisy[~sym.selected], CLEAN[~sym.selected])

    uni = noise.apply_noise(CLEAN, "uniform", 0.4, C, seed=1)
    n_sel = int(uni.selected.sum())
    kept = float((uni.noisy[uni.selected] == CLEAN[uni.selected]).double().mean())
    assert within_sampling_error(kept, 1 / C, n_sel), kept
    # and the redraws are spread over every class
    assert torch.bincount(uni.noisy[uni.selected], minlength=C).min() > 0


def test_pairflip_maps_c_to_c_plus_one_exactly():
    draw = noise.apply_noise(CLEAN, "pairflip", 0.3, C, seed=2)
    assert torch.equal(draw.noisy[draw.selected], (CLEAN[draw.selected] + 1) % C)
    assert torch.equal(draw.noisy[~draw.selected], CLEAN[~draw.selected])


def test_cifar10_asymmetric_mapping_by_class_name():
    draw = noise.apply_noise(CLEAN, "asymmetric", 0.3, C, seed=3, class_map=noise.CIFAR10_ASYMMETRIC_MAP)
    by_name = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    for c, name in enumerate(CIFAR10_NAMES):
        rows = draw.selected & (CLEAN == c)
        assert rows.sum() > 0
        want = CIFAR10_NAMES.index(by_name.get(name, name))
        assert (draw.noisy[rows] == want).all(), name


# ------------------------------------------------------------- determinism
@pytest.mark.parametrize("noise_type", ["symmetric", "uniform", "pairflip", "asymmetric"])
def test_same_seed_same_labels_other_seed_other_labels(noise_type):
    class_map = noise.CIFAR10_ASYMMETRIC_MAP if noise_type == "asymmetric" else None
    a = noise.apply_noise(CLEAN, noise_type, 0.3, C, seed=7, class_map=class_map)
    b = noise.apply_noise(CLEAN, noise_type, 0.3, C, seed=7, class_map=class_map)
    other = noise.apply_noise(CLEAN, noise_type, 0.3, C, seed=8, class_map=class_map)
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.selected, b.selected)
    assert not torch.equal(a.noisy, other.noisy)


def test_draw_does_not_depend_on_global_rng_state():
    torch.manual_seed(0)
    a = noise.apply_noise(CLEAN, "symmetric", 0.3, C, seed=5).noisy
    torch.manual_seed(99)
    torch.rand(1000)
    b = noise.apply_noise(CLEAN, "symmetric", 0.3, C, seed=5).noisy
    assert torch.equal(a, b)


def _noisy(data_dir, seed, cls=NoisyCIFAR10, **kw):
    dm = cls(data_dir=str(data_dir), val_size=0, noise_type="symmetric", noise_rate=0.4, noise_seed=seed, **kw)
    dm.setup("fit")
    return dm


def test_datamodule_noise_is_deterministic_in_seed(fake_cifar10_dir):
    a, b, other = (_noisy(fake_cifar10_dir, s) for s in (11, 11, 12))
    assert torch.equal(a.noisy_targets, b.noisy_targets)
    assert not torch.equal(a.noisy_targets, other.noisy_targets)
    assert torch.equal(a.clean_targets, other.clean_targets)


# -------------------------------------------------------------- CIFAR-100
def _hand_successor(fine_to_coarse: np.ndarray) -> dict[int, int]:
    """Next fine id (sorted) within the same superclass, wrapping around."""
    out = {}
    for coarse in np.unique(fine_to_coarse):
        fines = sorted(np.flatnonzero(fine_to_coarse == coarse).tolist())
        for i, f in enumerate(fines):
            out[f] = fines[(i + 1) % len(fines)]
    return out


def test_cifar100_asymmetric_is_next_fine_class_in_superclass(fake_cifar100_dir):
    fine_to_coarse = np.load(fake_cifar100_dir / "fine_to_coarse.npy")
    dm = NoisyCIFAR100(data_dir=str(fake_cifar100_dir), val_size=0, noise_type="asymmetric", noise_rate=0.4)
    dm.setup("fit")
    want = _hand_successor(fine_to_coarse)
    assert dm.class_map() == want
    sel = dm.noise_selected
    assert sel.any()
    mapped = torch.tensor([want[int(c)] for c in dm.clean_targets[sel]])
    assert torch.equal(dm.noisy_targets[sel], mapped)
    assert (fine_to_coarse[dm.noisy_targets.numpy()] == fine_to_coarse[dm.clean_targets.numpy()]).all()
    expected_t = noise.transition_matrix("asymmetric", 0.4, 100, want)
    torch.testing.assert_close(dm.transition_matrix, expected_t)


@pytest.mark.skipif(not (SHARED_DATA / "cifar100n_labels.npz").is_file(), reason="../shared/data absent")
def test_superclass_successor_map_on_real_cifar100_superclasses():
    z = np.load(SHARED_DATA / "cifar100n_labels.npz")
    fine, coarse = z["clean_label"], z["clean_coarse_label"]
    fine_to_coarse = np.full(100, -1)
    fine_to_coarse[fine] = coarse
    assert (fine_to_coarse[fine] == coarse).all(), "a fine class sits in two superclasses"
    assert (np.bincount(fine_to_coarse, minlength=20) == 5).all()
    mapping = noise.superclass_successor_map(fine_to_coarse.tolist())
    assert mapping == _hand_successor(fine_to_coarse)
    assert sorted(mapping.values()) == list(range(100))  # a permutation
    for f, g in mapping.items():
        assert g != f and fine_to_coarse[g] == fine_to_coarse[f]
        seen, x = [f], g  # cycles of length 5 inside the superclass
        while x != f:
            seen.append(x)
            x = mapping[x]
        assert len(seen) == 5


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.2", None])
def test_bad_noise_rate_is_named(rate):
    with pytest.raises(ValueError, match=r"noise_rate must be in \[0, 1\), got " + re.escape(repr(rate))):
        noise.check_noise_rate(rate)


def test_unknown_noise_type_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown noise_type 'gaussian'.*symmetric.*human"):
        noise.transition_matrix("gaussian", 0.1, 10)


def test_asymmetric_without_map_or_with_bad_map():
    with pytest.raises(ValueError, match="needs a class map"):
        noise.transition_matrix("asymmetric", 0.2, 10)
    with pytest.raises(ValueError, match="3->12 outside 0..9"):
        noise.transition_matrix("asymmetric", 0.2, 10, {3: 12})


def test_empirical_matrix_by_hand():
    clean = torch.tensor([0, 0, 0, 0, 1, 1])
    noisy = torch.tensor([0, 0, 0, 1, 1, 2])
    want = torch.tensor([[0.75, 0.25, 0], [0, 0.5, 0.5], [0, 0, 1]], dtype=torch.float64)  # class 2 unseen: identity
    torch.testing.assert_close(noise.empirical_transition_matrix(clean, noisy, 3), want)
    assert noise.actual_noise_rate(clean, noisy) == pytest.approx(2 / 6)


# ------------------------------------------- edges pinned by mutation testing (docs/mutation.md)
def test_error_messages_name_the_allowed_values_exactly():
    allowed = "clean, symmetric, uniform, pairflip, asymmetric, human"
    with pytest.raises(ValueError, match=re.escape(f"unknown noise_type 'gaussian'; allowed: {allowed}")):
        noise.check_noise_type("gaussian")
    with pytest.raises(ValueError, match=r"^asymmetric noise needs a class map; this dataset defines none$"):
        noise.flip_distribution("asymmetric", 10)
    with pytest.raises(ValueError, match=r"^noise_type 'human' has no flip distribution"):
        noise.flip_distribution("human", 10)


@pytest.mark.parametrize("entry", [{10: 1}, {1: 10}])
def test_class_map_entry_equal_to_the_class_count_is_outside(entry):
    """Classes are 0..C-1: an entry naming class C is refused with the range, not an IndexError."""
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        noise.flip_distribution("asymmetric", 10, entry)


def test_uniform_flip_distribution_is_exact_in_float64():
    f = noise.flip_distribution("uniform", 3)
    assert f.dtype == torch.float64 and f[0, 0].item() == 1.0 / 3  # 1/3 rounded once, in double precision


def test_noisy_labels_are_int64_whatever_the_input_dtype():
    draw = noise.apply_noise(CLEAN[:100].to(torch.int32), "symmetric", 0.5, C, seed=0)
    assert draw.noisy.dtype == torch.int64 and draw.selected.dtype == torch.bool


def test_clean_noise_selects_nothing_even_with_a_rate():
    """``clean`` is the identity flip: whatever the rate, no sample counts as selected."""
    draw = noise.apply_noise(CLEAN, "clean", 0.5, C, seed=0)
    assert torch.equal(draw.noisy, CLEAN) and not draw.selected.any()


def test_empirical_matrix_rows_with_a_single_sample():
    clean, noisy = torch.tensor([0, 1, 1]), torch.tensor([2, 1, 0])  # class 0 seen once, flipped to 2
    want = torch.tensor([[0, 0, 1], [0.5, 0.5, 0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(noise.empirical_transition_matrix(clean, noisy, 3), want)
