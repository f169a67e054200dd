"""``python train.py ARGS`` in its own process group, killed as a whole at a hard timeout.

A DDP run started by ``train.py`` spawns its other ranks as child processes; a
hung collective ignores SIGTERM, and ``subprocess.run(timeout=...)`` kills only
the launcher, leaving the other ranks behind. Here the whole group gets SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# Where the subprocess runs train: "cpu" (2 processes on gloo) in the suite; scripts/gpu_check.sh sets
# NLL_TEST_ACCELERATOR=gpu to run the same kill-and-resume and 2-process tests on CUDA (NCCL).
ACCELERATOR = os.environ.get("NLL_TEST_ACCELERATOR", "cpu")
if ACCELERATOR not in ("cpu", "gpu"):
    raise ValueError(f"NLL_TEST_ACCELERATOR must be cpu or gpu, got {ACCELERATOR!r}")


class Hung(AssertionError):
    """The run did not finish within its timeout (its whole process group was killed)."""


def train_in_group(args: list[str], cwd: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py with tests/ importable; raise ``Hung`` (with the output so far) past ``timeout`` seconds."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1", **(env or {}),
    )
    cmd = [sys.executable, str(REPO / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank it spawned
        out, err = proc.communicate()
        raise Hung(f"train.py did not finish in {timeout} s (process group killed):\n{out[-2000:]}\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
