"""Classical baselines: HOG + linear SVM script and the MLP config, on fake CIFAR-10."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
hog = pytest.importorskip("skimage.feature", reason="scikit-image (the optional 'hog' extra) is not installed").hog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import hog_svm  # noqa: E402
from conftest import score_test_split  # noqa: E402
from datamodules import NoisyCIFAR10  # noqa: E402
from lightning_modules.backbones import MLP  # noqa: E402


def test_hog_features_match_skimage_and_size():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    f = hog_svm.hog_features(images)
    # 8x8 cells of 4 px -> 7x7 blocks of 2x2 cells x 9 orientations
    assert f.shape == (3, 7 * 7 * 2 * 2 * 9) and f.dtype == np.float32
    ref = hog(images[1].permute(1, 2, 0).numpy(), orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2),
              block_norm="L2-Hys", channel_axis=-1)
    np.testing.assert_allclose(f[1], ref, rtol=1e-6)
    coarse = hog_svm.hog_features(images[:, :1], hog_svm.HogParams(pixels_per_cell=8))  # grey, 4x4 cells
    assert coarse.shape == (3, 3 * 3 * 2 * 2 * 9)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hog_svm.hog_features(torch.zeros(3, 32, 32, dtype=torch.uint8)), r"must be \[N, C, H, W\]"),
        (lambda: hog_svm.hog_features(torch.zeros(1, 3, 6, 6, dtype=torch.uint8)), "smaller than one HOG block"),
        (lambda: hog_svm.HogParams(orientations=0), "orientations must be >= 1"),
        (lambda: hog_svm.HogParams(pixels_per_cell=0), "pixels_per_cell must be >= 1"),
        (lambda: hog_svm.run(NoisyCIFAR10(data_dir="unused"), alpha=0.0), "alpha must be > 0"),
        (lambda: hog_svm.run(NoisyCIFAR10(data_dir="unused"), epochs=0), "epochs must be >= 1"),
    ],
)
def test_bad_input_fails_early(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_training_data_is_the_datamodules_noisy_split(fake_cifar10_dir):
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="symmetric", noise_rate=0.4)
    dm.setup("fit")
    x, noisy, clean = hog_svm.training_data(dm)
    assert len(x) == 400
    assert torch.equal(noisy, dm.noisy_targets[dm.train_indices])
    assert torch.equal(clean, dm.clean_targets[dm.train_indices])
    assert not torch.equal(noisy, clean)
    xt, yt = hog_svm.test_data(dm)
    assert xt.shape == (200, 3, 32, 32) and xt.dtype == torch.uint8 and len(yt) == 200


def test_script_prints_and_saves_accuracy_and_macro_f1(fake_cifar10_dir, tmp_path, capsys):
    out = tmp_path / "hog.json"
    result = hog_svm.main(["--data-dir", str(fake_cifar10_dir), "--noise-type", "symmetric", "--noise-rate", "0.2",
                           "--output", str(out)])
    printed = capsys.readouterr().out
    m = re.search(r"test acc (\d\.\d{4})  macro-F1 (\d\.\d{4})", printed)
    assert m and float(m.group(1)) == pytest.approx(result.test_acc, abs=5e-5)
    saved = json.loads(out.read_text())
    assert saved["test_acc"] == result.test_acc and saved["test_f1"] == result.test_f1
    assert result.n_train == 500 and result.n_test == 200  # --val-size 0 by default: the whole training set
    assert 0.15 < result.actual_noise_rate < 0.25
    # the fake classes differ by a bright square's position, which HOG sees through the pixel noise only
    # partly (0.435 when written); chance is 0.1
    assert result.test_acc > 0.3 and result.test_f1 > 0.25


def test_features_cache_is_reused_only_for_the_same_images(fake_cifar10_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hog.npz"
    args = ["--data-dir", str(fake_cifar10_dir), "--features-cache", str(cache), "--epochs", "2"]
    first = hog_svm.main(args)
    assert cache.is_file()

    def no_hog(*a, **k):
        raise AssertionError("features should have come from the cache")

    monkeypatch.setattr(hog_svm, "hog_features", no_hog)
    again = hog_svm.main(args)  # same images and labels: identical result, no HOG computed
    assert (again.test_acc, again.test_f1) == (first.test_acc, first.test_f1)
    hog_svm.main(args + ["--noise-type", "symmetric", "--noise-rate", "0.4"])  # labels differ, images do not
    with pytest.raises(AssertionError, match="from the cache"):
        hog_svm.main(args + ["--train-subset", "100"])  # other training rows: recomputed


def test_mlp_config_runs_through_the_cli_and_prints_metrics(fake_cifar10_dir, tmp_path, capsys):
    import train

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        train.main([
            "fit", "--config", str(REPO / "configs" / "baselines" / "mlp.yaml"),
            "--data.init_args.data_dir", str(fake_cifar10_dir), "--data.init_args.download", "false",
            "--data.init_args.val_size", "100", "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path),
        ])
    finally:
        sys.argv = argv
    printed = capsys.readouterr().out
    assert re.search(r"^test: acc \d\.\d{4}  macro-F1 \d\.\d{4}", printed, re.M)
    results = json.loads(next(tmp_path.rglob("test_results.json")).read_text())
    acc, f1 = score_test_split(Path(results["test"]["checkpoint"]), MLP(n_outputs=10, hidden=(512, 256)),
                              fake_cifar10_dir)
    assert results["test"]["test/acc"] == pytest.approx(acc, abs=1e-6)
    assert results["test"]["test/f1"] == pytest.approx(f1, abs=1e-6)
    assert f"test: acc {acc:.4f}  macro-F1 {f1:.4f}" in printed


@pytest.mark.parametrize("winner", hog_svm.ALPHA_CANDIDATES)
def test_alpha_auto_picks_the_best_candidate_on_held_out_training_images(monkeypatch, winner):
    """Only the training features/labels go in; the candidate that predicts them best comes out."""
    class Fake:
        def __init__(self, alpha: float):
            self.alpha = alpha

        def fit(self, x, y):
            return self

        def predict(self, x):
            return x[:, 0].astype(int) if self.alpha == winner else np.full(len(x), -1)

    monkeypatch.setattr(hog_svm, "linear_svm", lambda alpha, epochs, seed: Fake(alpha))
    features = (np.arange(200) % 10)[:, None].astype(np.float32)
    assert hog_svm.select_alpha(features, features[:, 0].astype(int), epochs=1, seed=0) == winner
