"""CIFAR-N's protocol next to the honest one: ``val_size: 0`` (no validation, no best-by-validation
checkpoint) and the labelled ``test_oracle_best`` (best test epoch), only when asked for."""

from __future__ import annotations

import json
import sys
import warnings

import pytest

from test_cli import _scalars, _tiny_config

from train import main  # noqa: E402

EPOCHS = 3


@pytest.fixture(autouse=True)
def _cwd(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)


def _fit(tmp_path, data_dir, extra):
    main(["fit", "--config", str(_tiny_config(tmp_path, data_dir)), "--trainer.max_epochs", str(EPOCHS),
          "--trainer.limit_train_batches", "2", *extra])
    log_dir = tmp_path / "runs" / "tiny" / "version_0"
    return log_dir, json.loads((log_dir / "test_results.json").read_text())


def test_val_size_zero_trains_without_validation_and_says_so(tmp_path, fake_cifar10_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_dir, results = _fit(tmp_path, fake_cifar10_dir, ["--data.init_args.val_size", "0"])
    # no empty validation loop, no checkpoint monitor waiting for a val/acc that never comes
    noise = [str(w.message) for w in caught if "monitored key" in str(w.message) or "is zero" in str(w.message)]
    assert not noise, noise
    assert sorted(p.name for p in (log_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # no best-by-validation
    assert results["test_best"] == {"skipped": "val_size is 0: no validation set, so no best-by-validation "
                                               "checkpoint; test is the last epoch"}
    assert results["test"]["checkpoint"].endswith("last.ckpt") and 0 <= results["test"]["test/acc"] <= 1
    assert "test_oracle_best" not in results  # only when asked for
    scalars = _scalars(log_dir)
    assert "val/acc" not in scalars and len(scalars["train/loss"]) == EPOCHS


def test_test_oracle_best_is_reported_only_when_asked_and_labelled(tmp_path, fake_cifar10_dir):
    log_dir, results = _fit(tmp_path, fake_cifar10_dir, ["--data.init_args.val_size", "0",
                                                         "--test_oracle.enabled", "true"])
    oracle = results["test_oracle_best"]
    assert len(oracle["per_epoch"]) == EPOCHS
    assert oracle["acc"] == max(oracle["per_epoch"]) and oracle["per_epoch"][oracle["epoch"]] == oracle["acc"]
    assert "NOT a valid model-selection number" in oracle["note"]
    # the oracle's last-epoch value is the test accuracy of last.ckpt measured by trainer.test
    assert oracle["per_epoch"][-1] == pytest.approx(results["test"]["test/acc"], abs=1e-6)
    assert _scalars(log_dir)["test_oracle/acc"] == pytest.approx(oracle["per_epoch"], abs=1e-6)
