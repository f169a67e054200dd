"""train.py's error path: a bad input found before training is one ``error:`` line, exit code 2, no run folder.

Each case feeds one bad input of docs/bad_inputs.md to the command line (in-process through
``train.main``, the function ``python train.py`` runs; three cases also as a real subprocess) and
checks that the first line the user sees names the argument, the value and what is allowed, that
no traceback or jsonargparse dump follows, and that the run folder the run would have created is
gone. ``test_docs_table_shows_the_first_line_of_every_cli_case`` keeps docs/bad_inputs.md in step.
"""

from __future__ import annotations

import pickle
import re
import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, run_train
from test_cli import _tiny_config

from train import main  # noqa: E402

NOISE = "--data.init_args.noise_type"


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])  # main() gets its arguments; pytest's are not for it
BACKBONE = "--model.init_args.backbone"


def _fail(capfd, tmp_path: Path, config: Path, extra: list[str], subcommand: str = "fit") -> str:
    """Run train.py in-process with a bad input; return stderr after checking the shape of the failure."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([subcommand, "--config", str(config), *extra])
    out, err = capfd.readouterr()
    assert exit_.value.code == 2, (out, err)
    assert out == "", f"something was printed before the error: {out!r}"
    first = err.splitlines()[0] if err else ""
    assert first.startswith("error: "), err
    for noise in ("Traceback", "Namespace(", "Does not validate against any of the Union subtypes",
                  "Given value type", "GPU available"):
        assert noise not in err, err
    assert not (tmp_path / "runs").exists(), sorted(p.name for p in (tmp_path / "runs").rglob("*"))
    return err.split("\n(", 1)[0]  # the message block, without the hint lines "(see ...)", "(run with ...)"


# (id, extra arguments, pattern the first line must match); every id is a row of docs/bad_inputs.md
CASES = [
    ("misspelt argument", ["--trainer.max_epochz", "3"],
     r"^error: unrecognized arguments: --trainer\.max_epochz 3$"),
    ("wrong type", ["--data.init_args.batch_size", "many"],
     r"^error: data\.init_args\.batch_size: Expected a <class 'int'>\. Got value: many$"),
    ("unknown class", ["--model", "lightning_modules.NoSuchMethod"],
     r"^error: model: .*'NoSuchMethod'"),
    ("literal of the wrong value", ["--model.init_args.loss", "mse"],
     r"^error: model\.init_args\.loss: Expected a typing\.Literal\['ce', 'gce'\]\. Got value: mse$"),
    ("backbone output size", [f"{BACKBONE}.init_args.n_outputs", "100"],
     r"^error: backbone CNN outputs 100 logits but the data has 10 classes; set the backbone's n_outputs to 10$"),
    ("backbone for other images",
     [BACKBONE, "lightning_modules.backbones.LeNet", f"{BACKBONE}.init_args.input_channel", "1"],
     r"^error: backbone LeNet cannot take images of shape \(3, 32, 32\)"),
    ("noise_rate", ["--data.init_args.noise_rate", "1.5"], r"^error: noise_rate must be in \[0, 1\), got 1\.5$"),
    ("noise_type", [NOISE, "gaussian"],
     r"^error: unknown noise_type 'gaussian'; allowed: clean, symmetric, uniform, pairflip, asymmetric, human$"),
    ("val_size fraction", ["--data.init_args.val_size", "1.5"],
     r"^error: val_size as a fraction must be in \[0, 1\), got 1\.5$"),
    ("batch_size 0", ["--data.init_args.batch_size", "0"], r"^error: batch_size must be >= 1, got 0$"),
    ("augmentation", ["--data.init_args.augmentation", "rotate"], r"^error: unknown augmentation 'rotate'; allowed: "),
    ("noise_rate with clean", [NOISE, "clean"], r"^error: noise_rate must be 0 for noise_type 'clean', got 0\.2$"),
    ("val_size as large as the data", ["--data.init_args.val_size", "500"],
     r"^error: val_size 500 leaves no training images out of 500$"),
    ("train_subset", ["--data.init_args.train_subset", "401"], r"^error: train_subset must be in 1\.\.400, got 401$"),
    ("human without file", [NOISE, "human", "--data.init_args.noise_rate", "0"],
     r"^error: noise_type 'human' needs both human_labels"),
    ("human label set", [NOISE, "human", "--data.init_args.noise_rate", "0", "--data.init_args.human_labels", "x.pt",
                         "--data.init_args.human_label_set", "worse"],
     r"^error: unknown human_label_set 'worse' for CIFAR-10; allowed: aggre, worst"),
    ("human file missing", [NOISE, "human", "--data.init_args.noise_rate", "0",
                            "--data.init_args.human_labels", "nothere.pt", "--data.init_args.human_label_set", "aggre"],
     r"^error: .*nothere\.pt does not exist"),
    ("compile_mode", ["--trainer.callbacks+=callbacks.Performance",
                      "--trainer.callbacks.compile_mode", "fast"],
     r"^error: unknown compile_mode 'fast'; allowed: default, reduce-overhead"),
    ("resident_on_device with workers",
     ["--data.init_args.resident_on_device", "true", "--data.init_args.num_workers", "2"],
     r"^error: resident_on_device needs num_workers 0 \(batches are made on the device\), not 2$"),
    ("periodic checkpoint interval", ["--trainer.callbacks+=callbacks.PeriodicCheckpoint",
                                      "--trainer.callbacks.every_n_train_steps", "0"],
     r"^error: every_n_train_steps must be >= 1, got 0$"),
    ("noisy_labels_path missing", ["--data.init_args.noisy_labels_path", "nothere.npz"],
     r"^error: noisy_labels_path nothere\.npz does not exist$"),
]


@pytest.mark.parametrize("extra,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(extra, pattern, capfd, tmp_path, fake_cifar10_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _fail(capfd, tmp_path, _tiny_config(tmp_path, fake_cifar10_dir), extra)
    assert re.search(pattern, first), first


# ------------------------------------------------------------------- data files
def test_missing_data_names_folder_url_and_download(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _fail(capfd, tmp_path, _tiny_config(tmp_path, tmp_path / "empty"), [])
    assert re.search(r"^error: CIFAR-10 not found: looked for the folder .*empty/cifar-10-batches-py .*"
                     r"`download: true` .*https://www\.cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz", first), first


def test_garbage_archive(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-10-python.tar.gz").write_bytes(b"not a tar file")
    first = _fail(capfd, tmp_path, _tiny_config(tmp_path, tmp_path / "data"), [])
    assert re.search(r"^error: cannot extract .*cifar-10-python\.tar\.gz", first), first


def test_corrupt_batch_file(capfd, tmp_path, fake_cifar10_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(fake_cifar10_dir, data)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    first = _fail(capfd, tmp_path, _tiny_config(tmp_path, data), [])
    assert re.search(r"^error: cannot read .*data_batch_1: not a valid CIFAR pickle", first), first


def test_pickled_noisy_labels_path(capfd, tmp_path, fake_cifar10_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.npz").write_bytes(pickle.dumps({"noisy_targets": [0, 1]}))
    first = _fail(capfd, tmp_path, _tiny_config(tmp_path, fake_cifar10_dir),
                  ["--data.init_args.noisy_labels_path", "labels.npz"])
    assert first.startswith("error: noisy_labels_path labels.npz is a Python pickle, which is never unpickled here; "
                            "expected a noisy_labels.npz written by a run"), first


def test_download_without_network(capfd, tmp_path, monkeypatch):
    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.chdir(tmp_path)
    first = _fail(capfd, tmp_path, _tiny_config(tmp_path, tmp_path / "data"), ["--data.init_args.download", "true"])
    assert re.search(r"^error: cannot download CIFAR-10 from "
                     r"https://www\.cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz "
                     r"\(\[Errno -2\] Name or service not known\)\. Without network access, "
                     r"download that file elsewhere and put it in .*data as cifar-10-python\.tar\.gz "
                     r"\(md5 c58f30108f718f92721af3b95e74349a\)", first), first


# ------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fake_cifar10_dir) -> Path:
    """A finished two-step run of the tiny config (its folder: checkpoints, noisy_labels.npz)."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    config = _tiny_config(tmp, fake_cifar10_dir)
    main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
          "--trainer.limit_test_batches", "1"])
    return tmp / "runs" / "tiny" / "version_0"


def test_checkpoint_errors_are_clean_lines(capfd, tmp_path, tiny_run, fake_cifar10_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _tiny_config(tmp_path, fake_cifar10_dir)
    last = tiny_run / "checkpoints" / "last.ckpt"
    half = tmp_path / "half.ckpt"
    half.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    notes = tmp_path / "notes.ckpt"
    notes.write_text("hello")
    cases = [
        (["--ckpt_path", str(half)], r"^error: cannot read checkpoint .*half\.ckpt: it is not a complete PyTorch"),
        (["--ckpt_path", str(notes)], r"^error: cannot read checkpoint .*notes\.ckpt"),
        (["--ckpt_path", str(tmp_path / "nothere.ckpt")], r"^error: Checkpoint file not found: .*nothere\.ckpt"),
        ([BACKBONE, "lightning_modules.backbones.MLP", "--ckpt_path", str(last)],
         r"^error: Error\(s\) in loading state_dict for Classifier:\n.*(Missing|Unexpected) key"),
        (["--data.init_args.noise_seed", "3", "--ckpt_path", str(last)],
         r"^error: refusing to resume: .*noisy_targets.*noise_seed: 0 in the checkpoint, 3 now"),
    ]
    for extra, pattern in cases:
        first = _fail(capfd, tmp_path, config, extra)
        assert re.search(pattern, first, re.DOTALL), (extra, first)


def test_resume_in_an_existing_run_folder_keeps_it(capfd, tmp_path, tiny_run, fake_cifar10_dir, monkeypatch):
    """A run folder that existed before the command (a resume) is never removed on an error."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    shutil.copytree(tiny_run, run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    config = _tiny_config(tmp_path, fake_cifar10_dir)
    capfd.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--trainer.logger.init_args.version", "0",
              "--data.init_args.noise_seed", "3", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    err = capfd.readouterr().err
    assert err.startswith("error: ") and "holds other noisy labels" in err.splitlines()[0], err
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert {k: after.get(k) for k in before} == before  # (TensorBoard may add an empty event file)


# ------------------------------------------------------------------- a real process
def test_subprocess_error_debug_flag_and_environment_variable(tmp_path, fake_cifar10_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = _tiny_config(tmp_path, fake_cifar10_dir)
    bad = ["fit", "--config", str(config), f"{BACKBONE}.init_args.n_outputs", "100"]  # found in setup
    proc = run_train(bad, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == ("error: backbone CNN outputs 100 logits but the data has 10 classes; "
                        "set the backbone's n_outputs to 10"), proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) <= 3, proc.stderr
    assert not (tmp_path / "runs").exists()

    proc = run_train([*bad, "--debug"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: backbone CNN outputs 100 logits" in proc.stderr

    monkeypatch.setenv("NOISY_DEBUG", "1")
    proc = run_train(["fit", "--config", str(config), "--data.init_args.noise_rate", "1.5"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: noise_rate must be in [0, 1), got 1.5" in proc.stderr


def test_docs_table_shows_the_first_line_of_every_cli_case():
    """Every CLI case above has a row in docs/bad_inputs.md's command-line table."""
    text = (REPO / "docs" / "bad_inputs.md").read_text()
    section = text.split("## What `train.py` prints", 1)
    assert len(section) == 2, "docs/bad_inputs.md lacks the section of train.py's first lines"
    for name, _, _ in CASES:
        assert f"| {name} |" in section[1], name
