"""NoisyImageFolder on tiny trees of real JPEG / PNG files written here with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import NoisyImageFolder
from datamodules.image_folder import load_image

COLOURS = {"cat": (220, 30, 30), "dog": (30, 200, 40), "frog": (40, 40, 230)}  # one flat colour per class


def write_tree(root: Path, per_class: dict[str, int], classes=COLOURS) -> Path:
    """root/<split>/<class>/i.{jpg,png}, images of varied sizes filled with the class colour."""
    for split, n in per_class.items():
        for name, rgb in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = (40 + 3 * i, 30 + i)  # non-square, not the training size
                Image.new("RGB", size, rgb).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def dm(root: Path, **kw) -> NoisyImageFolder:
    args = dict(root=str(root), batch_size=4, num_workers=0, image_size=16, val_size=3)
    args.update(kw)
    d = NoisyImageFolder(**args)
    d.setup("fit")
    return d


def test_class_folders_give_cifar_shaped_batches_decoded_in_workers(tmp_path):
    root = write_tree(tmp_path, {"train": 8, "test": 2})
    d = dm(root, num_workers=1)
    assert d.class_names == ["cat", "dog", "frog"] and d.num_classes == 3 and d.image_shape == (3, 16, 16)
    assert len(d.train_indices) + len(d.val_indices) == 24
    batches = list(d.train_dataloader())
    assert sum(len(b["index"]) for b in batches) == 20  # 21 training images, drop_last
    b = batches[0]
    assert set(b) == {"image", "target", "clean_target", "index"}
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (4, 3, 16, 16)
    for img, label in zip(b["image"], b["target"]):  # the pixels are the colour of the labelled class
        rgb = torch.tensor(list(COLOURS.values())[int(label)], dtype=torch.float)
        assert torch.allclose(img.float().mean((1, 2)), rgb, atol=6)  # JPEG tolerance
    test = next(iter(d.test_dataloader()))
    assert test["image"].shape[1:] == (3, 16, 16) and len(d.test_dataloader().dataset) == 6


def test_device_augmentation_for_any_image_size(tmp_path):
    root = write_tree(tmp_path, {"train": 4})
    d = NoisyImageFolder(root=str(root), image_size=48, val_size=0)
    assert d.train_transform.padding == 6  # image_size // 8, CIFAR's 4 px at 32
    x = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)
    out = d.train_transform(x)
    assert out.shape == (5, 3, 48, 48) and out.dtype == torch.float32
    assert NoisyImageFolder(root=str(root), image_size=48, crop_padding=0, val_size=0).train_transform.padding == 0
    with pytest.raises(ValueError, match="crop_padding must be in 0..47"):
        NoisyImageFolder(root=str(root), image_size=48, crop_padding=48)


def test_load_image_resizes_and_converts_grey_to_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((10, 20), 77, dtype=np.uint8), mode="L").save(path)
    img = load_image(str(path), 8)
    assert img.shape == (3, 8, 8) and img.dtype == torch.uint8 and bool((img == 77).all())


def test_bad_files_are_reported_by_path_counted_and_skipped_or_fatal(tmp_path):
    root = write_tree(tmp_path, {"train": 4})
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "train" / "dog" / "notes.txt").write_text("hello")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0")  # dot-files are ignored
    with pytest.warns(UserWarning, match="skipping 2 unreadable"):
        d = dm(root, on_bad_file="skip")
    assert sorted(Path(p).name for p, _ in d.bad_files) == ["broken.jpg", "notes.txt"]
    assert len(d.train_indices) + len(d.val_indices) == 12
    with pytest.raises(ValueError, match=r"2 unreadable or non-image files in the train split:\n.*broken\.jpg"):
        dm(root, on_bad_file="error")
    with pytest.raises(ValueError, match="on_bad_file must be 'skip' or 'error'"):
        NoisyImageFolder(root=str(root), on_bad_file="ignore")


def test_empty_class_folder_and_mismatched_splits_fail_early(tmp_path):
    root = write_tree(tmp_path / "a", {"train": 2, "val": 1})
    (root / "train" / "bird").mkdir()
    with pytest.raises(ValueError, match="empty class folders in .*train: bird"):
        NoisyImageFolder(root=str(root))
    root = write_tree(tmp_path / "b", {"train": 2, "test": 1})
    (root / "test" / "dog" / "0.png").unlink(), (root / "test" / "dog" / "0.png").parent.rmdir()
    with pytest.raises(ValueError, match=r"classes of .*test differ .*missing \['dog'\], extra \[\]"):
        NoisyImageFolder(root=str(root))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        NoisyImageFolder(root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="num_classes is 5 but .* has 3 class folders"):
        NoisyImageFolder(root=str(tmp_path / "b"), num_classes=5)


def test_synthetic_noise_on_top_and_asymmetric_class_map_by_name(tmp_path):
    root = write_tree(tmp_path, {"train": 20})
    d = dm(root, noise_type="symmetric", noise_rate=0.4, noise_seed=1)
    folder_labels = torch.arange(3).repeat_interleave(20)
    assert torch.equal(d.clean_targets, folder_labels)
    assert 0.2 < d.actual_noise_rate < 0.6
    assert torch.equal(d.noisy_targets != d.clean_targets, d.noise_selected)
    a = dm(root, noise_type="asymmetric", noise_rate=0.5, asymmetric_map={"cat": "dog"})
    changed = a.noisy_targets != a.clean_targets
    assert changed.any() and bool((a.clean_targets[changed] == 0).all()) and bool((a.noisy_targets[changed] == 1).all())
    with pytest.raises(ValueError, match="needs asymmetric_map"):
        NoisyImageFolder(root=str(root), noise_type="asymmetric", noise_rate=0.4)
    with pytest.raises(ValueError, match="asymmetric_map names class 'bird'"):
        NoisyImageFolder(root=str(root), noise_type="asymmetric", noise_rate=0.4, asymmetric_map={"bird": "cat"})


def test_meta_set_from_folders_and_too_large(tmp_path):
    root = write_tree(tmp_path, {"train": 6, "val": 1})
    d = dm(root, meta_size=2, noise_type="symmetric", noise_rate=0.4)
    assert torch.bincount(d.clean_targets[d.meta_indices], minlength=3).tolist() == [2, 2, 2]
    assert not set(d.meta_indices.tolist()) & set(d.train_indices.tolist())
    assert len(d.train_indices) == 12 and len(d.val_indices) == 3  # root/val is the validation split
    batch, _, _ = next(iter(d.train_dataloader()))
    assert torch.equal(batch["meta"]["target"], d.clean_targets[batch["meta"]["index"]])
    with pytest.raises(ValueError, match=r"meta_size 7 per class is larger than class 0 \(cat\)"):
        dm(root, meta_size=7)


def test_clothing1m_style_file_lists_with_human_noise_and_clean_subset(tmp_path):
    root = write_tree(tmp_path, {"train": 4, "test": 1})
    files = sorted((root / "train").rglob("*.*"))
    given = {f: (i % 3) for i, f in enumerate(files)}  # labels unrelated to the folders: "noisy"
    (tmp_path / "noisy_train.txt").write_text(
        "# path label\n" + "".join(f"{f.relative_to(root)} {label}\n" for f, label in given.items()))
    verified = [f for i, f in enumerate(files) if i % 4 < 2]  # 2 of the 4 images of each class
    truth = {f: ["cat", "dog", "frog"].index(f.parent.name) for f in verified}
    (tmp_path / "clean.txt").write_text("".join(f"{f.relative_to(root)} {label}\n" for f, label in truth.items()))
    tests = sorted((root / "test").rglob("*.*"))
    (tmp_path / "test.txt").write_text("".join(f"{f.relative_to(root)} {i}\n" for i, f in enumerate(tests)))
    d = dm(root, train_list=str(tmp_path / "noisy_train.txt"), clean_list=str(tmp_path / "clean.txt"),
           test_list=str(tmp_path / "test.txt"), noise_type="human", class_names=["cat", "dog", "frog"], val_size=0,
           meta_size=1)
    assert d.num_classes == 3 and d.clean_known.sum() == 6
    assert d.noisy_targets.tolist() == list(given.values())
    expected_clean = [truth.get(f, label) for f, label in given.items()]
    assert d.clean_targets.tolist() == expected_clean
    assert bool(d.clean_known[d.meta_indices].all())  # trusted labels only
    assert len(next(iter(d.test_dataloader()))["image"]) == 3
    (tmp_path / "bad.txt").write_text(f"{files[0].relative_to(root)}\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected 'path label'"):
        NoisyImageFolder(root=str(root), train_list=str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="need a train_list"):
        NoisyImageFolder(root=str(root), test_list=str(tmp_path / "test.txt"))
