"""Bad checkpoints, resumes and command lines get clear errors (rows of docs/bad_inputs.md).

The table in docs/bad_inputs.md names, for every row, the test that covers it;
``test_every_row_of_the_table_names_an_existing_test`` keeps the two in step.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from callbacks.atomic_checkpoint import with_atomic_checkpoint_io
from callbacks.exact_resume import ExactResume
from callbacks import PeriodicCheckpoint
from datamodules import NoisyCIFAR10, NoisyCIFAR100
from datamodules.noisy_cifar import NOISY_LABELS_FILE
from lightning_modules import Classifier
from lightning_modules.backbones import CNN, MLP

REPO = Path(__file__).resolve().parents[1]


def dm10(data_dir, **kw) -> NoisyCIFAR10:
    args = dict(data_dir=str(data_dir), batch_size=32, val_size=100, noise_type="symmetric", noise_rate=0.2)
    return NoisyCIFAR10(**{**args, **kw})


def trainer(tmp: Path, logger=False, **kw) -> pl.Trainer:
    """A Trainer set up as train.py sets one up (ExactResume, AtomicCheckpointIO) plus a PeriodicCheckpoint."""
    args = dict(
        plugins=with_atomic_checkpoint_io(None),
        accelerator="cpu", max_epochs=1, logger=logger, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1, deterministic=True, default_root_dir=str(tmp),
        callbacks=[ExactResume(), PeriodicCheckpoint(every_n_train_steps=5, dirpath=str(tmp / "ckpt"))],
    )
    args.update(kw)
    return pl.Trainer(**args)


@pytest.fixture(scope="module")
def cnn_checkpoint(fake_cifar10_dir, tmp_path_factory) -> Path:
    """A mid-epoch checkpoint of a width-0.125 CNN Classifier (step 10 of 12; batch size 32)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    pl.seed_everything(0)
    trainer(tmp).fit(Classifier(CNN(width=0.125)), datamodule=dm10(fake_cifar10_dir))
    path = tmp / "ckpt" / "last-step.ckpt"
    assert torch.load(path, weights_only=False)["global_step"] == 10
    return path


def resume(tmp, model, dm, ckpt) -> None:
    trainer(tmp, max_epochs=2).fit(model, datamodule=dm, ckpt_path=str(ckpt))


# --------------------------------------------------------------- checkpoints
def test_truncated_checkpoint(cnn_checkpoint, fake_cifar10_dir, tmp_path):
    bad = tmp_path / "half.ckpt"
    data = cnn_checkpoint.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*half.ckpt: it is not a complete PyTorch"):
        resume(tmp_path, Classifier(CNN(width=0.125)), dm10(fake_cifar10_dir), bad)


def test_file_that_is_not_a_checkpoint(fake_cifar10_dir, tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("hello")
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*notes.ckpt"):
        resume(tmp_path, Classifier(CNN(width=0.125)), dm10(fake_cifar10_dir), bad)


def test_missing_checkpoint(fake_cifar10_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Checkpoint file not found: .*nothere.ckpt"):
        resume(tmp_path, Classifier(CNN(width=0.125)), dm10(fake_cifar10_dir), tmp_path / "nothere.ckpt")


def test_checkpoint_of_another_architecture(cnn_checkpoint, fake_cifar10_dir, tmp_path):
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict.*Unexpected key\(s\)|Unexpected key"):
        resume(tmp_path, Classifier(MLP(hidden=(8,))), dm10(fake_cifar10_dir), cnn_checkpoint)


def test_checkpoint_of_another_width(cnn_checkpoint, fake_cifar10_dir, tmp_path):
    with pytest.raises(RuntimeError, match=r"size mismatch for backbone.features.0.weight.*\[16, 3, 3, 3\].*\[32, 3"):
        resume(tmp_path, Classifier(CNN(width=0.25)), dm10(fake_cifar10_dir), cnn_checkpoint)


def test_checkpoint_of_another_datasets_class_count(cnn_checkpoint, fake_cifar100_dir, tmp_path):
    """A CIFAR-10 checkpoint resumed on CIFAR-100 (the model built for 100 classes, as train.py links it)."""
    dm = NoisyCIFAR100(data_dir=str(fake_cifar100_dir), batch_size=32, val_size=100)
    model = Classifier(CNN(width=0.125, n_outputs=100), num_classes=100)
    with pytest.raises(RuntimeError, match=r"size mismatch for backbone.head.weight: .*\[10, 16\].*\[100, 16\]"):
        resume(tmp_path, model, dm, cnn_checkpoint)


def test_resume_with_other_noise_settings(cnn_checkpoint, fake_cifar10_dir, tmp_path):
    message = r"refusing to resume: .*noisy_targets.*noise_seed: 0 in the checkpoint, 3 now"
    with pytest.raises(ValueError, match=message):
        resume(tmp_path, Classifier(CNN(width=0.125)), dm10(fake_cifar10_dir, noise_seed=3), cnn_checkpoint)


def test_resume_with_another_split(cnn_checkpoint, fake_cifar10_dir, tmp_path):
    message = r"refusing to resume: .*train_indices.*split_seed: 0 in the checkpoint, 1 now"
    with pytest.raises(ValueError, match=message):
        resume(tmp_path, Classifier(CNN(width=0.125)), dm10(fake_cifar10_dir, split_seed=1), cnn_checkpoint)


def test_mid_epoch_resume_with_another_batch_size(cnn_checkpoint, fake_cifar10_dir, tmp_path):
    with pytest.raises(ValueError, match=r"cannot resume mid-epoch with batch_size 16: .*batch_size 32"):
        resume(tmp_path, Classifier(CNN(width=0.125)), dm10(fake_cifar10_dir, batch_size=16), cnn_checkpoint)


def test_run_folder_holding_other_labels(fake_cifar10_dir, tmp_path):
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version="v")
    first = dm10(fake_cifar10_dir)
    first.trainer = trainer(tmp_path, logger=logger)
    first.setup("fit")
    saved = tmp_path / "run" / "v" / NOISY_LABELS_FILE
    before = saved.read_bytes()
    other = dm10(fake_cifar10_dir, noise_seed=9)
    other.trainer = trainer(tmp_path, logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version="v"))
    with pytest.raises(ValueError, match=r"noisy_labels.npz holds other noisy labels than this run draws"):
        other.setup("fit")
    assert saved.read_bytes() == before  # the run's record of its labels is untouched
    with np.load(saved) as z:
        assert int(z["noise_seed"]) == 0


def test_no_logger_writes_no_labels_file_into_the_working_directory(fake_cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = dm10(fake_cifar10_dir)
    dm.trainer = trainer(tmp_path, logger=False, default_root_dir=None)
    dm.setup("fit")
    assert not (tmp_path / NOISY_LABELS_FILE).exists()


# ---------------------------------------------------------- options / CLI
def test_periodic_checkpoint_needs_a_positive_interval():
    with pytest.raises(ValueError, match="every_n_train_steps must be >= 1, got 0"):
        PeriodicCheckpoint(every_n_train_steps=0)


SAFE = ["--data.init_args.download", "false"]  # should a parse succeed by mistake, no download/training


def cli(args: list[str], capsys, tmp_path, monkeypatch) -> tuple[int, str, str]:
    """Run train.main(ARGS) in ``tmp_path``; (exit code, stdout, stderr)."""
    import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        train.main(["fit", "--config", str(REPO / "tests" / "configs" / "tiny.yaml"), *SAFE, *args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_misspelt_argument(capsys, tmp_path, monkeypatch):
    code, _, err = cli(["--trainer.max_epochz", "3"], capsys, tmp_path, monkeypatch)
    assert code != 0 and "trainer.max_epochz" in err


def test_abbreviated_argument_is_taken_as_the_full_name(capsys, tmp_path, monkeypatch):
    """argparse accepts an unambiguous prefix: --trainer.max_epoch is --trainer.max_epochs (not an error)."""
    code, out, _ = cli(["--trainer.max_epoch", "7", "--print_config"], capsys, tmp_path, monkeypatch)
    assert code == 0 and "max_epochs: 7" in out


def test_argument_of_the_wrong_type(capsys, tmp_path, monkeypatch):
    code, _, err = cli(["--data.init_args.batch_size", "many"], capsys, tmp_path, monkeypatch)
    assert code != 0 and "batch_size" in err and "many" in err


def test_unknown_model_class(capsys, tmp_path, monkeypatch):
    code, _, err = cli(["--model", "lightning_modules.NoSuchMethod"], capsys, tmp_path, monkeypatch)
    assert code != 0 and "NoSuchMethod" in err


# ------------------------------------------------------------ the doc table
def table_rows() -> list[tuple[str, str]]:
    """(input, test reference) of every row of docs/bad_inputs.md."""
    rows = []
    for line in (REPO / "docs" / "bad_inputs.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and "::" in cells[-1]:
            rows.append((cells[0], cells[-1].strip("`")))
    return rows


def test_every_row_of_the_table_names_an_existing_test():
    rows = table_rows()
    assert len(rows) >= 30
    for what, ref in rows:
        path, name = ref.split("::")
        name = name.split("[")[0]
        source = (REPO / path).read_text()
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"row {what!r}: {ref} does not exist"
    here = Path(__file__).read_text()
    mine = set(re.findall(r"^def (test_\w+)\(", here, re.M)) - {"test_every_row_of_the_table_names_an_existing_test"}
    listed = {ref.split("::")[1].split("[")[0] for _, ref in rows if ref.startswith("tests/test_bad_inputs.py")}
    assert mine <= listed, f"tests of this file missing from docs/bad_inputs.md: {sorted(mine - listed)}"
