"""NoisyCIFAR datamodules on the tiny fake data, the batched augmentation, and bad-input errors."""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from datamodules import NoisyCIFAR10, NoisyCIFAR100, augment
from datamodules.noisy_cifar import NOISY_LABELS_FILE
from datamodules.train_augmentations import TRAIN_AUGMENTATIONS
from fake_cifar import write_fake_cifar10
from lightning_modules import Classifier
from lightning_modules.backbones import CNN, LeNet
from lightning_modules.method_base import check_backbone

MEAN = torch.tensor(augment.CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(augment.CIFAR10_STD).view(1, 3, 1, 1)


def _official_read(folder: Path, files: list[str], label_key="labels") -> tuple[torch.Tensor, torch.Tensor]:
    """Reference reader with the plain pickle module (trusted test data)."""
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key]))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)).long()


@pytest.fixture(scope="module")
def reference(fake_cifar10_dir):
    folder = fake_cifar10_dir / "cifar-10-batches-py"
    train = _official_read(folder, [f"data_batch_{i}" for i in range(1, 6)])
    test = _official_read(folder, ["test_batch"])
    return train, test


def _dm(data_dir, **kw) -> NoisyCIFAR10:
    kw = {"val_size": 100, "noise_type": "symmetric", "noise_rate": 0.4, "batch_size": 32, **kw}
    dm = NoisyCIFAR10(data_dir=str(data_dir), **kw)
    dm.setup("fit")
    return dm


def _trainer(tmp_path) -> pl.Trainer:
    return pl.Trainer(logger=TensorBoardLogger(str(tmp_path), name="run"), accelerator="cpu", devices=1,
                      enable_progress_bar=False, enable_model_summary=False, max_epochs=1)


# ------------------------------------------------------------------ setup
def test_targets_matrix_and_split(fake_cifar10_dir, reference):
    (_, y_train), _ = reference
    dm = _dm(fake_cifar10_dir)
    assert dm.noisy_targets.dtype == dm.clean_targets.dtype == torch.int64
    assert dm.noisy_targets.shape == dm.clean_targets.shape == (500,)  # whole training set, before the split
    assert torch.equal(dm.clean_targets, y_train)
    assert dm.transition_matrix.shape == (10, 10)
    torch.testing.assert_close(dm.transition_matrix.sum(1), torch.ones(10, dtype=torch.float64))
    assert dm.actual_noise_rate == pytest.approx(float((dm.noisy_targets != y_train).double().mean()))
    assert 0.25 < dm.actual_noise_rate < 0.55  # r = 0.4 on 500 labels
    assert len(dm.val_indices) == 100 and len(dm.train_indices) == 400
    both = torch.cat([dm.train_indices, dm.val_indices])
    assert torch.equal(both.sort().values, torch.arange(500))  # disjoint and complete
    assert dm.num_classes == 10 and dm.image_shape == (3, 32, 32) and dm.class_names[0] == "airplane"


def test_fractional_val_size_and_train_subset(fake_cifar10_dir):
    dm = _dm(fake_cifar10_dir, val_size=0.2)
    assert len(dm.val_indices) == 100 and len(dm.train_indices) == 400
    full = dm.train_indices
    sub = _dm(fake_cifar10_dir, val_size=0.2, train_subset=50)
    assert len(sub.train_indices) == 50 and set(sub.train_indices.tolist()) <= set(full.tolist())
    assert torch.equal(sub.val_indices, dm.val_indices)
    assert len(sub.train_dataloader()) == 50 // 32  # drop_last on training batches


def test_batches_carry_image_targets_and_index(fake_cifar10_dir, reference):
    (x_train, y_train), (x_test, y_test) = reference
    dm = _dm(fake_cifar10_dir)
    seen = []
    for batch in dm.train_dataloader():
        assert set(batch) == {"image", "target", "clean_target", "index"}
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
        idx = batch["index"]
        assert torch.equal(batch["image"], x_train[idx])
        assert torch.equal(batch["target"], dm.noisy_targets[idx])
        assert torch.equal(batch["clean_target"], y_train[idx])
        seen.append(idx)
    seen = torch.cat(seen)
    assert len(seen) == 12 * 32 and set(seen.tolist()) <= set(dm.train_indices.tolist())
    test_batch = next(iter(dm.test_dataloader()))
    assert torch.equal(test_batch["image"], x_test[test_batch["index"]])
    assert torch.equal(test_batch["target"], y_test[test_batch["index"]])
    assert sum(len(b["index"]) for b in dm.test_dataloader()) == 200


def test_validation_labels_noisy_by_default_clean_on_request(fake_cifar10_dir, reference):
    (_, y_train), _ = reference
    dm = _dm(fake_cifar10_dir)
    vb = next(iter(dm.val_dataloader()))
    assert set(vb["index"].tolist()) <= set(dm.val_indices.tolist())
    assert torch.equal(vb["target"], dm.noisy_targets[vb["index"]])
    assert not torch.equal(vb["target"], y_train[vb["index"]])  # r = 0.4: some of 64 labels differ
    clean_dm = _dm(fake_cifar10_dir, val_clean_labels=True)
    vb = next(iter(clean_dm.val_dataloader()))
    assert torch.equal(vb["target"], y_train[vb["index"]])
    assert torch.equal(clean_dm.noisy_targets, dm.noisy_targets)  # training labels unaffected


def test_noisy_labels_saved_in_log_dir_and_read_back(tmp_path, fake_cifar10_dir, fake_cifar100_dir):
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="pairflip", noise_rate=0.3,
                      noise_seed=5)
    trainer = _trainer(tmp_path)
    dm.trainer = trainer
    dm.setup("fit")
    saved = Path(trainer.log_dir) / NOISY_LABELS_FILE
    assert saved.is_file() and saved.parent.parent.parent == tmp_path
    with np.load(saved) as z:
        assert np.array_equal(z["noisy_targets"], dm.noisy_targets.numpy())
        assert str(z["noise_type"]) == "pairflip" and float(z["noise_rate"]) == 0.3
    # another seed and even another noise type: the file wins
    back = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100, noise_type="symmetric", noise_rate=0.1,
                        noise_seed=99, noisy_labels_path=str(saved))
    back.setup("fit")
    assert torch.equal(back.noisy_targets, dm.noisy_targets)
    torch.testing.assert_close(back.transition_matrix, dm.transition_matrix)
    assert torch.equal(back.noise_selected, dm.noise_selected)
    assert back.actual_noise_rate == dm.actual_noise_rate

    # the file of a different dataset is refused
    other = write_fake_cifar10(tmp_path / "other", seed=1).parent  # other clean labels, same size
    with pytest.raises(ValueError, match="was written for another dataset"):
        NoisyCIFAR10(data_dir=str(other), val_size=0, noisy_labels_path=str(saved)).setup("fit")
    with pytest.raises(ValueError, match="was written for another dataset: 500 labels .* 1000 training labels"):
        NoisyCIFAR100(data_dir=str(fake_cifar100_dir), val_size=0, noisy_labels_path=str(saved)).setup("fit")
    # right labels, wrong class count
    with np.load(saved) as z:
        arrays = dict(z)
    arrays["transition_matrix"] = np.eye(5)
    np.savez(tmp_path / "five.npz", **arrays)
    with pytest.raises(ValueError, match="another class count than 10"):
        NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=0, noisy_labels_path=str(tmp_path / "five.npz")).setup()
    with pytest.raises(FileNotFoundError, match="noisy_labels_path .*missing.npz does not exist"):
        NoisyCIFAR10(data_dir=str(fake_cifar10_dir), noisy_labels_path=str(tmp_path / "missing.npz")).setup()


def test_after_transfer_augments_in_training_and_only_normalises_otherwise(fake_cifar10_dir):
    dm = _dm(fake_cifar10_dir)
    raw = next(iter(dm.val_dataloader()))
    expected = (raw["image"].float() / 255 - MEAN) / STD
    dm.trainer = types.SimpleNamespace(training=False)
    out = dm.on_after_batch_transfer(dict(raw), 0)
    torch.testing.assert_close(out["image"], expected)
    assert torch.equal(out["target"], raw["target"]) and torch.equal(out["index"], raw["index"])
    dm.trainer = types.SimpleNamespace(training=True)
    torch.manual_seed(0)
    aug = dm.on_after_batch_transfer(dict(raw), 0)["image"]
    assert aug.shape == expected.shape and aug.dtype == torch.float32
    assert not torch.allclose(aug, expected)


# ------------------------------------------------------------ augmentation
def _unique_image(n=1, seed=0) -> torch.Tensor:
    """Images whose 32x32 windows of the reflect-padded version are all different."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def _find_windows(out: torch.Tensor, padded: np.ndarray) -> list[tuple[int, int]]:
    """All (dy, dx) with out == padded[:, dy:dy+32, dx:dx+32]."""
    return [(dy, dx) for dy in range(9) for dx in range(9)
            if np.array_equal(out.numpy(), padded[:, dy:dy + 32, dx:dx + 32])]


def test_random_crop_is_a_window_of_the_reflect_padded_image():
    img = _unique_image().float()
    n = 400
    batch = img.expand(n, -1, -1, -1).contiguous()
    out = augment.random_crop(batch, 4, generator=torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    # hand-made reference: numpy's 'reflect' padding (edge not repeated), as torchvision's padding_mode='reflect'
    padded = np.pad(img[0].numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
    assert padded[0, 0, 0] == img[0, 0, 4, 4] and padded[0, 4, 3] == img[0, 0, 0, 1]
    offsets = []
    for i in range(n):
        found = _find_windows(out[i], padded)
        assert len(found) == 1, f"sample {i} is not a window of the padded image"
        offsets.append(found[0])
    dy, dx = np.array(offsets).T
    assert len(set(offsets)) >= 70  # 81 possible offsets, 400 draws: nearly all appear
    assert set(dy) == set(dx) == set(range(9))
    assert abs(dy.mean() - 4) < 0.6 and abs(dx.mean() - 4) < 0.6  # uniform on 0..8 (sd 2.58 / sqrt 400 = 0.13)


def test_different_samples_get_different_offsets():
    imgs = _unique_image(64, seed=3).float()
    out = augment.random_crop(imgs, 4, generator=torch.Generator().manual_seed(0))
    offsets = []
    for i in range(64):
        padded = np.pad(imgs[i].numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
        found = _find_windows(out[i], padded)
        assert len(found) == 1
        offsets.append(found[0])
    assert len(set(offsets)) > 20


def test_gather_rows_cols_matches_advanced_indexing_and_reflect_matches_f_pad():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.uint8, torch.float32):
        x = torch.randint(0, 256, (5, 3, 12, 16), generator=g).to(dtype)
        rows, cols = torch.randint(0, 12, (5, 7), generator=g), torch.randint(0, 16, (5, 9), generator=g)
        ref = x[torch.arange(5)[:, None, None, None], torch.arange(3)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]
        out = augment.gather_rows_cols(x, rows, cols)
        assert out.dtype == dtype and torch.equal(out, ref)
    img = torch.arange(20.0).view(1, 1, 4, 5)
    padded = torch.nn.functional.pad(img, (3, 3, 3, 3), mode="reflect")[0, 0]
    assert torch.equal(img[0, 0][augment.reflect_indices(4, 3)][:, augment.reflect_indices(5, 3)], padded)
    with pytest.raises(ValueError, match=r"reflect padding must be in \[0, 4\) for an axis of 4 pixels, got 4"):
        augment.reflect_indices(4, 4)


def test_random_hflip_about_half_and_exact():
    img = _unique_image().float()
    n = 4000
    out = augment.random_hflip(img.expand(n, -1, -1, -1), generator=torch.Generator().manual_seed(0))
    same = (out == img).flatten(1).all(1)
    flipped = (out == img.flip(3)).flatten(1).all(1)
    assert (same ^ flipped).all()  # each sample is the image or its mirror, never anything else
    frac = float(flipped.double().mean())
    assert abs(frac - 0.5) < 4 * (0.25 / n) ** 0.5
    assert augment.random_hflip(img, p=0.0).equal(img) and augment.random_hflip(img, p=1.0).equal(img.flip(3))


def test_cropflip_output_dtype_range_and_content():
    x = _unique_image(256, seed=5)
    torch.manual_seed(0)
    out = augment.CropFlip(augment.CIFAR10_MEAN, augment.CIFAR10_STD)(x)
    assert out.shape == (256, 3, 32, 32) and out.dtype == torch.float32
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    # undo the normalisation: each sample is a (possibly mirrored) window of its padded image
    pix = torch.round((out * STD + MEAN) * 255)
    n_flipped = 0
    for i in range(256):
        padded = np.pad(x[i].float().numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
        plain, mirrored = _find_windows(pix[i], padded), _find_windows(pix[i].flip(2), padded)
        assert len(plain) + len(mirrored) == 1, i
        n_flipped += len(mirrored)
    assert 64 < n_flipped < 192
    assert not torch.equal(out, augment.CropFlip(augment.CIFAR10_MEAN, augment.CIFAR10_STD)(x))


def test_eval_transform_is_deterministic_and_exact():
    x = _unique_image(8)
    t = augment.Normalize(augment.CIFAR10_MEAN, augment.CIFAR10_STD)
    a, b = t(x), t(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, (x.float() / 255 - MEAN) / STD)
    assert torch.equal(TRAIN_AUGMENTATIONS["none"](augment.CIFAR10_MEAN, augment.CIFAR10_STD)(x), a)


def test_apply_transform_merges_dict_outputs():
    batch = {"image": _unique_image(2), "target": torch.tensor([1, 2])}
    out = augment.apply_transform(lambda x: {"view1": x.float(), "view2": x.float() + 1}, batch)
    assert set(out) == {"image", "target", "view1", "view2"} and out["image"].dtype == torch.uint8


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise_type": "symmetric", "noise_rate": 1.0}, r"noise_rate must be in \[0, 1\), got 1.0"),
        ({"noise_type": "symmetric", "noise_rate": -0.2}, r"noise_rate must be in \[0, 1\), got -0.2"),
        ({"noise_type": "gaussian", "noise_rate": 0.2}, r"unknown noise_type 'gaussian'; allowed: clean, "),
        ({"noise_type": "clean", "noise_rate": 0.2}, r"noise_rate must be 0 for noise_type 'clean', got 0.2"),
        ({"noise_type": "human", "human_labels": "x.pt", "human_label_set": "best"},
         r"unknown human_label_set 'best' for CIFAR-10"),
        ({"val_size": 1.5}, r"val_size as a fraction must be in \[0, 1\), got 1.5"),
        ({"val_size": -3}, r"val_size must be >= 0, got -3"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"augmentation": "mixup"},
         r"unknown augmentation 'mixup'; allowed: crop_flip, crop2_flip, crop2_altflip, none, crop_flip_twice, "
         r"crop2_flip_twice, simclr"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoisyCIFAR10(**kwargs)


def test_bad_split_arguments_are_named(fake_cifar10_dir):
    with pytest.raises(ValueError, match="val_size 500 leaves no training images out of 500"):
        _dm(fake_cifar10_dir, val_size=500)
    with pytest.raises(ValueError, match=r"train_subset must be in 1..400, got 401"):
        _dm(fake_cifar10_dir, train_subset=401)


def test_asymmetric_for_a_dataset_without_a_map(fake_cifar10_dir):
    class NoMap(NoisyCIFAR10):
        def class_map(self):
            return None

    with pytest.raises(ValueError, match="asymmetric noise is not defined for CIFAR-10"):
        NoMap(data_dir=str(fake_cifar10_dir), noise_type="asymmetric", noise_rate=0.2).setup("fit")


def test_backbone_output_size_must_match_class_count():
    with pytest.raises(ValueError, match="backbone CNN outputs 7 logits but the data has 10 classes"):
        check_backbone(CNN(n_outputs=7, width=0.0625), 10, (3, 32, 32))
    with pytest.raises(ValueError, match=r"backbone LeNet cannot take images of shape \(3, 32, 32\)"):
        check_backbone(LeNet(input_channel=1), 10, (3, 32, 32))
    model = Classifier(backbone=CNN(n_outputs=100, width=0.0625), num_classes=10)
    with pytest.raises(ValueError, match="outputs 100 logits but the data has 10 classes"):
        model.setup("fit")
    check_backbone(CNN(n_outputs=10, width=0.0625), 10, (3, 32, 32))  # the right size passes


def test_bad_backbone_fails_before_any_training_step(tmp_path, fake_cifar10_dir):
    steps = []

    class Recording(Classifier):
        def training_step(self, batch, batch_idx):
            steps.append(batch_idx)
            return super().training_step(batch, batch_idx)

    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=100)
    model = Recording(backbone=LeNet(n_outputs=5), num_classes=10)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=1, accelerator="cpu", devices=1,
                         default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="outputs 5 logits but the data has 10 classes"):
        trainer.fit(model, datamodule=dm)
    assert steps == []
