"""Shared fixtures: tiny CIFAR folders, and the real CIFAR-10 copy when ../shared/data exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_cifar import write_fake_cifar10, write_fake_cifar100  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def fake_cifar10_dir(tmp_path_factory) -> Path:
    """A data_dir holding a tiny CIFAR-10 (500 train / 200 test) in the official layout."""
    root = tmp_path_factory.mktemp("cifar10")
    write_fake_cifar10(root)
    return root


@pytest.fixture(scope="session")
def fake_cifar100_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar100")
    write_fake_cifar100(root)
    return root


@pytest.fixture(scope="session")
def real_cifar10_dir(tmp_path_factory) -> Path:
    """The real CIFAR-10 copy from ../shared/data written out in the official layout (skips without it)."""
    script = SHARED_DATA / "make_cifar10.py"
    if not script.is_file():
        pytest.skip(f"real CIFAR-10 copy not available ({SHARED_DATA} absent)")
    cached = os.environ.get("REAL_CIFAR10_DIR")
    if cached and (Path(cached) / "cifar-10-batches-py").is_dir():
        return Path(cached)
    root = tmp_path_factory.mktemp("real_cifar10")
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    return root


# set by pl.seed_everything and Trainer(deterministic=True) in many tests: put back after each one
_RESTORED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")


def _torch_settings() -> tuple:
    import torch

    return torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()


@pytest.fixture(scope="session")
def session_settings() -> dict:
    """Process-wide settings as the session started (before any test or module fixture ran)."""
    import torch

    return {"torch": _torch_settings(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "env": {k: os.environ.get(k) for k in _RESTORED_ENV}}


@pytest.fixture(autouse=True)
def no_global_state_leaks(request, session_settings):
    """A test (or a module fixture it uses) must not change process-wide settings for the tests after it.

    Thread count, default dtype and grad mode must come back as the session started
    (a leak fails the test that caused it, at teardown, and is undone); the seed and
    determinism settings that Lightning sets as a side effect are put back silently.
    """
    import torch

    yield
    torch.use_deterministic_algorithms(session_settings["deterministic"])
    for k, v in session_settings["env"].items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    before, after = session_settings["torch"], _torch_settings()
    if after != before:
        torch.set_num_threads(before[0])
        torch.set_default_dtype(before[1])
        torch.set_grad_enabled(before[2])
        pytest.fail(f"{request.node.nodeid} left (threads, default dtype, grad mode) = {after}, was {before}")


@pytest.fixture
def printed_config(capsys, monkeypatch):
    """``parse(ARGS, cwd=REPO)``: the config ``train.py ARGS --print_config`` prints, as a dict.

    train.py's own parser in this process (a CLI start costs seconds); ``sys.argv`` is pinned so that
    Lightning does not see pytest's arguments, and a non-zero exit fails the test with the CLI's stderr.
    """
    import yaml

    from train import main

    monkeypatch.setattr(sys, "argv", ["train.py"])

    def parse(args: list[str], cwd: Path = REPO) -> dict:
        monkeypatch.chdir(cwd)
        with pytest.raises(SystemExit) as exited:  # --print_config prints the parsed config and exits
            main([*args, "--print_config"])
        out, err = capsys.readouterr()
        assert exited.value.code == 0, f"train.py {' '.join(args)} exited {exited.value.code}\n{err[-3000:]}"
        return yaml.safe_load(out)

    return parse


def run_train(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python train.py ARGS`` as a user would; fail the test with its output on error."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    return proc


def score_test_split(checkpoint: Path, backbone, data_dir: Path) -> tuple[float, float]:
    """(accuracy, macro-F1) of a Classifier checkpoint on the CIFAR-10 test split in ``data_dir``,
    from a forward pass and scikit-learn: what a run's reported ``test/acc`` and ``test/f1`` must equal."""
    import torch
    from sklearn.metrics import f1_score

    from datamodules import NoisyCIFAR10
    from lightning_modules import Classifier

    model = Classifier(backbone)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    dm = NoisyCIFAR10(data_dir=str(data_dir), val_size=100)
    dm.setup("test")
    preds, targets = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            preds.append(model(dm.eval_transform(batch["image"])).argmax(1))
            targets.append(batch["target"])
    pred, target = torch.cat(preds).numpy(), torch.cat(targets).numpy()
    return float((pred == target).mean()), float(f1_score(target, pred, average="macro", labels=range(10)))
