"""Confident learning: the K-fold split, the held-out fold in the datamodule, joining the folds'
predictions, the corrected noisy_labels.npz (read back by a datamodule), cleanlab on synthetic
probabilities, and (slow) the whole script on the tiny CIFAR-10."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch

from datamodules import NoisyCIFAR10
from datamodules.corrected_labels import measured_noise, write_corrected_labels
from datamodules.folds import cv_folds, split_fold
from datamodules.noisy_dataset import save_noisy_labels
from resume_helpers import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("confident_learning", REPO / "scripts" / "confident_learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folds_partition_the_indices_evenly_and_by_seed():
    indices = torch.arange(100, 110)
    folds = cv_folds(indices, 3, seed=0)
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert sorted(torch.cat(folds).tolist()) == list(range(100, 110))
    assert [f.tolist() for f in cv_folds(indices, 3, seed=0)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in cv_folds(indices, 3, seed=1)] != [f.tolist() for f in folds]
    train, held = split_fold(indices, 3, 2, seed=0)
    assert held.tolist() == folds[2].tolist() and not set(train.tolist()) & set(held.tolist())
    assert sorted(train.tolist() + held.tolist()) == list(range(100, 110))
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        split_fold(indices, 3, 3, seed=0)
    with pytest.raises(ValueError, match="num_folds must be 0 \\(off\\) or an integer >= 2"):
        cv_folds(indices, 1, seed=0)


def test_datamodule_holds_out_one_fold_of_the_training_set(fake_cifar10_dir):
    kw = dict(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="symmetric", noise_rate=0.4)
    full = NoisyCIFAR10(**kw)
    full.setup("fit")
    dm = NoisyCIFAR10(**kw, num_folds=4, fold=1)
    dm.setup("fit")
    train, held = set(dm.train_indices.tolist()), set(dm.heldout_indices.tolist())
    assert not train & held and train | held == set(full.train_indices.tolist())
    assert len(held) == 100  # 400 training images / 4 folds
    assert torch.equal(dm.val_indices, full.val_indices)  # validation is not touched
    seen = torch.cat([b["index"] for b in dm.heldout_dataloader()])
    assert seen.tolist() == dm.heldout_indices.tolist()
    with pytest.raises(ValueError, match="fold 2 needs num_folds >= 2"):
        NoisyCIFAR10(**kw, fold=2)


def labels_file(tmp_path, clean, noisy, num_classes=3):
    path = tmp_path / "noisy_labels.npz"
    np.savez(path, clean_targets=np.array(clean), noisy_targets=np.array(noisy),
             noise_selected=np.array(noisy) != np.array(clean), transition_matrix=np.eye(num_classes),
             dataset=np.array("x"), actual_noise_rate=np.array(0.0))
    return path


def test_corrected_labels_by_hand(tmp_path):
    src = labels_file(tmp_path, clean=[0, 1, 2, 0, 1, 2], noisy=[0, 2, 2, 1, 1, 0])  # 3 of 6 wrong
    out = tmp_path / "cl" / "noisy_labels.npz"
    summary = write_corrected_labels(src, out, np.array([1, 3, 4]), np.array([1, 0, 2]))  # 2 fixed, 1 broken
    assert summary == {"noise_rate_before": 0.5, "noise_rate_after": pytest.approx(2 / 6), "fix": "relabel",
                       "relabelled": 3, "pruned": 0, "changed": 3}
    with np.load(out) as z:
        assert z["noisy_targets"].tolist() == [0, 1, 2, 0, 2, 0]
        assert z["noise_selected"].tolist() == [False, False, False, False, True, True]
        assert z["transition_matrix"].tolist() == [[1, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]]
        assert float(z["actual_noise_rate"]) == pytest.approx(2 / 6)
        assert str(z["dataset"]) == "x"  # everything else is kept
    with pytest.raises(ValueError, match="new labels must be in 0..2"):
        write_corrected_labels(src, out, np.array([0]), np.array([3]))


def test_pruned_labels_by_hand(tmp_path):
    src = labels_file(tmp_path, clean=[0, 1, 2, 0, 1, 2], noisy=[0, 2, 2, 1, 1, 0])  # 3 of 6 wrong
    out = tmp_path / "pruned.npz"
    summary = write_corrected_labels(src, out, np.array([1, 3, 4]), np.array([1, 0, 2]), prune=True)
    # kept: samples 0, 2, 5 with labels 0, 2, 0 against 0, 2, 2: one wrong of three
    assert summary == {"noise_rate_before": 0.5, "noise_rate_after": pytest.approx(1 / 3), "fix": "prune",
                       "relabelled": 0, "pruned": 3, "changed": 3}
    with np.load(out) as z:
        assert z["noisy_targets"].tolist() == [0, 2, 2, 1, 1, 0]  # labels untouched
        assert z["excluded"].tolist() == [False, True, False, True, True, False]
    assert measured_noise(out) == pytest.approx(1 / 3)
    assert measured_noise(out, among=np.array([0, 1, 2])) == 0.0  # 1 is pruned; 0 and 2 are right
    assert measured_noise(src, among=np.array([0, 1, 2])) == pytest.approx(1 / 3)


def test_a_datamodule_trains_on_the_corrected_labels(fake_cifar10_dir, tmp_path):
    kw = dict(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="symmetric", noise_rate=0.4)
    dm = NoisyCIFAR10(**kw)
    dm.setup("fit")
    save_noisy_labels(dm, tmp_path / "noisy_labels.npz")
    wrong = (dm.noisy_targets != dm.clean_targets).nonzero().squeeze(1)[:10]
    write_corrected_labels(tmp_path / "noisy_labels.npz", tmp_path / "fixed.npz", wrong.numpy(),
                           dm.clean_targets[wrong].numpy())
    fixed = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noisy_labels_path=str(tmp_path / "fixed.npz"))
    fixed.setup("fit")
    assert torch.equal(fixed.noisy_targets[wrong], dm.clean_targets[wrong])
    assert fixed.actual_noise_rate == pytest.approx(dm.actual_noise_rate - 10 / len(dm.clean_targets))


def test_a_datamodule_leaves_pruned_samples_out_of_training_only(fake_cifar10_dir, tmp_path):
    from datamodules.label_fingerprints import check_run_folder_labels

    kw = dict(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="symmetric", noise_rate=0.4)
    dm = NoisyCIFAR10(**kw)
    dm.setup("fit")
    save_noisy_labels(dm, tmp_path / "noisy_labels.npz")
    wrong = (dm.noisy_targets != dm.clean_targets).nonzero().squeeze(1)
    pruned = wrong[torch.isin(wrong, dm.train_indices)][:10]
    assert len(pruned) == 10
    write_corrected_labels(tmp_path / "noisy_labels.npz", tmp_path / "pruned.npz", pruned.numpy(),
                           dm.noisy_targets[pruned].numpy(), prune=True)
    fixed = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noisy_labels_path=str(tmp_path / "pruned.npz"))
    fixed.setup("fit")
    keep = ~torch.isin(dm.train_indices, pruned)
    assert torch.equal(fixed.train_indices, dm.train_indices[keep])  # the same split, less the pruned
    assert torch.equal(fixed.val_indices, dm.val_indices) and torch.equal(fixed.noisy_targets, dm.noisy_targets)
    # a run trained on the pruned file writes the mask into its folder, and a run folder with another mask
    # is refused as another run's
    save_noisy_labels(fixed, tmp_path / "run" / "noisy_labels.npz")
    with np.load(tmp_path / "run" / "noisy_labels.npz") as z:
        assert np.array_equal(z["excluded"], fixed.excluded.numpy())
    check_run_folder_labels(fixed, tmp_path / "run" / "noisy_labels.npz")  # the same: accepted
    with pytest.raises(ValueError, match="holds other noisy labels"):
        check_run_folder_labels(dm, tmp_path / "run" / "noisy_labels.npz")  # nothing pruned: another run


def test_join_folds_orders_by_index_and_refuses_overlap(tmp_path):
    cl = load_script()
    np.savez(tmp_path / "a.npz", index=np.array([5, 1]), probs=np.array([[0.1, 0.9], [0.8, 0.2]]),
             given=np.array([1, 0]))
    np.savez(tmp_path / "b.npz", index=np.array([3]), probs=np.array([[0.3, 0.7]]), given=np.array([0]))
    index, probs, given = cl.join_folds([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert index.tolist() == [1, 3, 5] and given.tolist() == [0, 0, 1]
    assert probs.tolist() == [[0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]
    with pytest.raises(ValueError, match="overlap"):
        cl.join_folds([tmp_path / "a.npz", tmp_path / "a.npz"])


def test_cleanlab_flags_the_confidently_contradicted_labels(tmp_path):
    pytest.importorskip("cleanlab", reason="cleanlab is an optional extra: pip install -e '.[cleanlab]'")
    cl = load_script()
    rng = np.random.default_rng(0)
    n, c = 300, 3
    clean = np.arange(n) % c
    given = clean.copy()
    wrong = np.arange(0, n, 10)  # 30 flipped labels, to the next class
    given[wrong] = (clean[wrong] + 1) % c
    probs = np.full((n, c), 0.05)
    probs[np.arange(n), clean] = 0.9  # a model that learnt the true classes
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    index = np.arange(100, 100 + n)
    full_clean = np.zeros(100 + n, dtype=np.int64)
    full_clean[index] = clean
    full_noisy = full_clean.copy()
    full_noisy[index] = given
    src = labels_file(tmp_path, clean=full_clean.tolist(), noisy=full_noisy.tolist(), num_classes=c)
    issues = cl.find_issues(given, probs)
    assert sorted(issues.tolist()) == wrong.tolist()
    result = cl.report(tmp_path, src, index, probs, given, issues)
    assert (result["precision"], result["recall"], result["auroc"]) == (1.0, 1.0, 1.0)
    assert result["noise_rate_before"] == pytest.approx(30 / 400) and result["noise_rate_after"] == 0.0
    with open(tmp_path / "suspected_mislabelled.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and {int(r["index"]) for r in rows} == set((index[wrong]).tolist())
    assert all(int(r["suggested_label"]) == full_clean[int(r["index"])] for r in rows)
    assert json.loads((tmp_path / "detection.json").read_text())["num_flagged"] == 30


@pytest.mark.slow
def test_script_runs_k_folds_of_train_py_and_writes_usable_labels(fake_cifar10_dir, tmp_path, monkeypatch):
    pytest.importorskip("cleanlab", reason="cleanlab is an optional extra: pip install -e '.[cleanlab]'")
    from resume_helpers import CLASSIFIER, write_config

    config = write_config(tmp_path, fake_cifar10_dir, CLASSIFIER, max_epochs=1)
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    result = load_script().main(["--out", str(tmp_path / "cl"), "--folds", "2", "--", "--config", str(config),
                                 "--trainer.callbacks", "[]"])
    held = [np.load(tmp_path / "cl" / f"fold{k}" / "run" / "heldout_probs.npz")["index"] for k in (0, 1)]
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="symmetric", noise_rate=0.2)
    dm.setup("fit")
    assert sorted(np.concatenate(held).tolist()) == dm.train_indices.tolist()  # every sample predicted once
    fixed = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100,
                         noisy_labels_path=str(tmp_path / "cl" / "noisy_labels.npz"))
    fixed.setup("fit")
    assert fixed.actual_noise_rate == pytest.approx(result["noise_rate_after"])
    assert result["num_samples"] == len(dm.train_indices)
    # called again, it trains nothing (every fold wrote its predictions) and reports the same
    script = load_script()
    monkeypatch.setattr(script.subprocess, "run", lambda *a, **k: pytest.fail(f"retrained a finished fold: {a}"))
    again = script.main(["--out", str(tmp_path / "cl"), "--folds", "2", "--", "--config", str(config),
                         "--trainer.callbacks", "[]"])
    assert again == result
    train = dm.train_indices
    assert result["fix"] == "relabel"
    assert result["train_noise_before"] == pytest.approx((dm.noisy_targets[train] != dm.clean_targets[train])
                                                         .float().mean().item())
    assert result["train_noise_after"] == pytest.approx((fixed.noisy_targets[train] != fixed.clean_targets[train])
                                                        .float().mean().item())
    # the same folds, the flagged samples pruned instead: trained on by nobody, labels unchanged
    pruned = script.main(["--out", str(tmp_path / "cl"), "--folds", "2", "--fix", "prune", "--", "--config",
                          str(config), "--trainer.callbacks", "[]"])
    flagged = [int(r["index"]) for r in csv.DictReader(open(tmp_path / "cl" / "suspected_mislabelled.csv"))]
    assert pruned["pruned"] == len(flagged) > 0
    left = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100,
                        noisy_labels_path=str(tmp_path / "cl" / "noisy_labels.npz"))
    left.setup("fit")
    assert sorted(left.train_indices.tolist()) == sorted(set(dm.train_indices.tolist()) - set(flagged))
    assert torch.equal(left.noisy_targets, dm.noisy_targets)
    kept = left.train_indices
    assert pruned["train_noise_after"] == pytest.approx(
        (left.noisy_targets[kept] != left.clean_targets[kept]).float().mean().item())
