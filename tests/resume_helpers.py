"""Running ``train.py`` in a subprocess for the fault-tolerance tests, with tests/ importable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from process_group import ACCELERATOR

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

CLASSIFIER = {
    "class_path": "lightning_modules.Classifier",
    "init_args": {
        "backbone": {"class_path": "lightning_modules.backbones.CNN", "init_args": {"n_outputs": 10, "width": 0.125}},
        "lr_schedule": "cosine",  # a per-step schedule: its position must be restored too
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}},
    },
}


def write_config(tmp: Path, data_dir: Path, model: dict, max_epochs: int = 2, extra_data: dict | None = None) -> Path:
    """A tiny, deterministic CPU run: 400 training images, batches of 32 -> 12 steps per epoch."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": ACCELERATOR,
            "devices": 1,
            "max_epochs": max_epochs,
            "deterministic": True,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            # last-step.ckpt every 5 steps and on SIGTERM (train.py's own checkpoint saves at epoch ends)
            "callbacks": [{"class_path": "callbacks.PeriodicCheckpoint",
                           "init_args": {"every_n_train_steps": 5}}],
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                # a fixed version: a resumed run writes into the same folder and finds its last.ckpt
                "init_args": {"save_dir": str(tmp / "runs"), "name": "run", "version": "v"},
            },
        },
        "model": model,
        "data": {
            "class_path": "datamodules.NoisyCIFAR10",
            "init_args": {
                "data_dir": str(data_dir), "batch_size": 32, "val_size": 100, "noise_type": "symmetric",
                "noise_rate": 0.2, "noise_seed": 0, **(extra_data or {}),
            },
        },
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(args: list[str], cwd: Path, timeout: int = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` with tests/ on the path (for the fault-injection callbacks)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1", **(env or {}),
    )
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def checked(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def run_dir(tmp: Path) -> Path:
    return tmp / "runs" / "run" / "v"


def final_weights(tmp: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir(tmp) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"]


def kill_callback(step: int, signal_name: str) -> list[str]:
    return [
        "--trainer.callbacks+=fault_injection.KillAtStep",
        f"--trainer.callbacks.step={step}",
        f"--trainer.callbacks.signal_name={signal_name}",
    ]
