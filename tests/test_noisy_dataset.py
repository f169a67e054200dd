"""The noisy-dataset base: what every dataset gets from it, and how small a new dataset is."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from datamodules import NoisyCIFAR10, NoisyDataModule, NoisyImageFolder
from datamodules.contracts import NoisyData
from datamodules.noisy_cifar import NoisyCIFAR
from test_image_folder import write_tree

DATAMODULES = Path(__file__).resolve().parents[1] / "datamodules"


def test_cifar_and_image_folder_satisfy_the_noisy_data_contract(fake_cifar10_dir, tmp_path):
    cifar = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=50, noise_type="symmetric", noise_rate=0.2)
    folder = NoisyImageFolder(root=str(write_tree(tmp_path, {"train": 4})), val_size=2, num_workers=0, image_size=8)
    for dm in (cifar, folder):
        dm.setup("fit")
        assert isinstance(dm, NoisyData) and isinstance(dm, NoisyDataModule)
    assert issubclass(NoisyCIFAR, NoisyDataModule)  # the old import path still loads saved configs


def test_public_accessors(fake_cifar10_dir, tmp_path):
    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=50)
    with pytest.raises(RuntimeError, match=r"training_images\(\) needs setup\(\) first"):
        dm.training_images()
    dm.setup("fit")
    images, labels = dm.training_images()
    assert images.dtype == torch.uint8 and images.shape == (450, 3, 32, 32)
    assert torch.equal(labels, dm.noisy_targets[dm.train_indices])
    assert torch.equal(dm.training_set_images(dm.train_indices), images)
    assert dm.training_set_images().shape == (500, 3, 32, 32)
    test, test_labels = dm.test_images()
    assert test.shape == (200, 3, 32, 32) and len(test_labels) == 200
    assert bool(dm.clean_known.all())
    folder = NoisyImageFolder(root=str(write_tree(tmp_path, {"train": 4})), val_size=2, num_workers=0, image_size=8)
    folder.setup("fit")
    with pytest.raises(NotImplementedError, match="holds no image tensor"):
        folder.training_images()


def test_resident_on_device_needs_images_in_memory(tmp_path):
    with pytest.raises(ValueError, match="resident_on_device needs images held in memory; NoisyImageFolder"):
        NoisyImageFolder(root=str(write_tree(tmp_path, {"train": 2})), num_workers=0, resident_on_device=True)


class TinyTensors(NoisyDataModule):
    """The module docstring's recipe: a dataset is its name, shape, statistics and a reader."""

    dataset_name, num_classes, image_shape = "tiny", 3, (3, 8, 8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def read_splits(self):
        self.class_names = ["a", "b", "c"]
        g = torch.Generator().manual_seed(0)

        def split(n: int) -> SimpleNamespace:
            images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
            return SimpleNamespace(images=images, labels=torch.arange(n) % 3)

        return split(60), None, split(12)


def test_a_new_dataset_is_one_small_class():
    dm = TinyTensors(batch_size=8, val_size=6, noise_type="pairflip", noise_rate=0.3, meta_size=2)
    dm.setup("fit")
    assert isinstance(dm, NoisyData)
    assert len(dm.val_indices) == 6 and len(dm.meta_indices) == 6 and len(dm.train_indices) == 48
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert set(batch) == {"train", "meta"} and batch["train"]["image"].shape == (8, 3, 8, 8)
    assert len(next(iter(dm.test_dataloader()))["target"]) == 12
    assert dm.state_dict()["dataset"] == "tiny"
    with pytest.raises(ValueError, match="asymmetric noise is not defined for tiny"):
        TinyTensors(noise_type="asymmetric", noise_rate=0.2, val_size=6).setup("fit")
    with pytest.raises(ValueError, match="noise_type 'human' is not available for tiny"):
        TinyTensors(noise_type="human", val_size=6).setup("fit")


def _imports(module: str) -> set[str]:
    tree = ast.parse((DATAMODULES / f"{module}.py").read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }


def test_augmentation_modules_import_one_way():
    assert "simclr_augment" not in _imports("augment") and "train_augmentations" not in _imports("augment")
    assert "train_augmentations" not in _imports("simclr_augment")
    assert {"augment", "simclr_augment"} <= _imports("train_augmentations")


def test_a_held_out_meta_set_need_not_be_served(fake_cifar10_dir):
    """serve_meta false: the same training images as the meta-set method (the meta set held out of
    both), but plain batches, so a baseline never sees the clean meta images."""
    kw = dict(data_dir=str(fake_cifar10_dir), val_size=50, meta_size=3, batch_size=16)
    served, held = NoisyCIFAR10(**kw), NoisyCIFAR10(serve_meta=False, **kw)
    for dm in (served, held):
        dm.setup("fit")
    assert torch.equal(served.train_indices, held.train_indices) and len(held.meta_indices) == 30
    assert not set(held.meta_indices.tolist()) & set(held.train_indices.tolist())
    assert set(served.train_dataloader().iterables) == {"train", "meta"}  # a CombinedLoader
    batch = next(iter(held.train_dataloader()))
    assert set(batch) == {"image", "target", "clean_target", "index"}
    assert not set(batch["index"].tolist()) & set(held.meta_indices.tolist())


def test_a_missing_datamodule_attribute_is_reported_as_an_input_error(fake_cifar10_dir):
    """contracts.require names the attribute, the user and the datamodule, and its error is one that
    train.py reports in one line before training (not a traceback)."""
    import train
    from datamodules.contracts import require

    dm = NoisyCIFAR10(data_dir=str(fake_cifar10_dir), val_size=50)  # not set up: no labels yet
    with pytest.raises(AttributeError) as err:
        require(dm, "noisy_targets", "LabelNoiseDiagnostics")
    assert "LabelNoiseDiagnostics needs the datamodule's 'noisy_targets'" in str(err.value)
    assert "NoisyCIFAR10" in str(err.value) and isinstance(err.value, train.INPUT_ERRORS)


class Bare:
    """A datamodule with nothing the features below read (what a user's own minimal datamodule may be)."""


@pytest.mark.parametrize("user, attribute", [
    ("scoring the training set", "train_eval_dataloader"),
    ("TestOracle", "test_dataloader"),
    ("MislabelDetection", "train_eval_dataloader"),
    ("PatchWhitening", "training_images"),
    ("KNNMonitor", "train_dataloader"),
])
def test_each_feature_names_the_datamodule_attribute_it_lacks(user, attribute):
    from callbacks import KNNMonitor, MislabelDetection, PatchWhitening, TestOracle
    from datamodules.contracts import MissingDataError
    from lightning_modules import Classifier
    from lightning_modules.backbones import MLP
    from lightning_modules.sample_scores import score_training_set

    model = Classifier(MLP(input_channel=3, n_outputs=10, image_size=4, hidden=(8,)))
    trainer = SimpleNamespace(datamodule=Bare())
    model._trainer = trainer
    call = {
        "scoring the training set": lambda: score_training_set(model, lambda x, y: {}),
        "TestOracle": lambda: TestOracle(enabled=True).on_train_epoch_end(trainer, model),
        "MislabelDetection": lambda: MislabelDetection().on_train_end(trainer, model),
        "PatchWhitening": lambda: PatchWhitening().setup(trainer, model, "fit"),
        "KNNMonitor": lambda: KNNMonitor().accuracy(trainer, model),
    }[user]
    with pytest.raises(MissingDataError, match=f"{user} needs the datamodule's '{attribute}'.*this run has Bare"):
        call()
