"""The cluster commands as written: docs/cluster.md's ``train.py`` lines and scripts/slurm_train.sbatch.

Every command is parsed by train.py's CLI with ``--print_config`` (the whole config
stack must make a complete run). The SLURM script runs as SLURM would run it, with
a stand-in ``srun`` that drops its own options and adds ``--print_config``, so the
checkpoint a requeued job resumes from is visible too, without a cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_train.sbatch"
FAKE_SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift 2; done   # srun's own options (--cpus-per-task N)
exec "$@" --print_config
"""


def sbatch_option(name: str) -> str:
    (value,) = re.findall(rf"^#SBATCH --{name}=(\S+)", SCRIPT.read_text(), flags=re.M)
    return value


@pytest.fixture
def submit_dir(tmp_path) -> Path:
    """A submit folder like a fresh clone's root (no runs/), and a bin/ with srun and python."""
    submit = tmp_path / "clone"
    submit.mkdir()
    for name in ("train.py", "configs", "callbacks", "datamodules", "lightning_modules"):
        (submit / name).symlink_to(REPO / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return submit


def run_job(submit: Path, *args: str) -> dict:
    env = dict(os.environ, PATH=f"{submit.parent / 'bin'}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO),
               PYTHONWARNINGS="ignore", SLURM_SUBMIT_DIR=str(submit), SLURM_JOB_ID="4242", SLURM_JOB_NAME="noisy",
               SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE="4", SLURM_CPUS_PER_TASK="8")
    env.pop("SLURM_ARRAY_JOB_ID", None)
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=submit, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return yaml.safe_load(proc.stdout)


def test_the_log_goes_to_a_folder_that_a_fresh_clone_has():
    """SLURM opens --output before the script runs; a missing folder kills the job with no log."""
    folder = Path(sbatch_option("output")).parent
    tracked = subprocess.run(["git", "ls-files", str(folder)], cwd=REPO, capture_output=True, text=True).stdout
    assert folder == Path(".") or tracked.strip(), f"{folder} is not in a fresh clone"


def test_the_documented_config_stack_parses_into_a_complete_run(submit_dir):
    cfg = run_job(submit_dir, "configs/coteaching/cifar10.yaml", "configs/coteaching/cifar10_sym50.yaml")
    assert cfg["model"]["class_path"] == "lightning_modules.CoTeaching"
    assert cfg["data"]["class_path"] == "datamodules.NoisyCIFAR10"
    assert cfg["data"]["init_args"]["noise_rate"] == 0.5 and cfg["data"]["init_args"]["noise_type"] == "symmetric"
    trainer = cfg["trainer"]
    assert (int(trainer["num_nodes"]), int(trainer["devices"]), trainer["strategy"]) == (2, 4, "ddp")
    root = "runs/slurm/coteaching_cifar10_sym50/4242"
    assert trainer["default_root_dir"] == root
    assert str(trainer["logger"]["init_args"]["version"]) == "4242"
    assert (submit_dir / root).is_dir()
    assert cfg["ckpt_path"] == "last"  # first run: nothing saved yet


def test_a_requeued_job_resumes_from_its_newest_checkpoint_not_an_old_hpc_one(submit_dir):
    root = submit_dir / "runs/slurm/coteaching_cifar10_sym50/4242"
    (root / "checkpoints").mkdir(parents=True)
    old_hpc = root / "hpc_ckpt_1.ckpt"  # saved at the first requeue signal
    newer = root / "checkpoints" / "last-step.ckpt"  # written later, before a node failure
    for path, age in ((old_hpc, 600), (root / "checkpoints" / "last.ckpt", 300), (newer, 10)):
        path.write_bytes(b"")
        os.utime(path, (time.time() - age,) * 2)
    cfg = run_job(submit_dir, "configs/coteaching/cifar10.yaml", "configs/coteaching/cifar10_sym50.yaml")
    assert Path(cfg["ckpt_path"]) == Path("runs/slurm/coteaching_cifar10_sym50/4242/checkpoints/last-step.ckpt")
    os.utime(old_hpc)  # a new requeue signal: now the hpc checkpoint is the newest
    cfg = run_job(submit_dir, "configs/coteaching/cifar10.yaml", "configs/coteaching/cifar10_sym50.yaml")
    assert Path(cfg["ckpt_path"]) == Path("runs/slurm/coteaching_cifar10_sym50/4242/hpc_ckpt_1.ckpt")


DOCS = REPO / "docs" / "cluster.md"


def doc_commands(program: str) -> list[list[str]]:
    """Every command of the bash blocks of docs/cluster.md that runs ``program``, continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if program in line.split():
                commands.append(line.split())
    return commands


def test_the_docs_train_commands_parse_into_complete_runs(printed_config):
    commands = doc_commands("train.py")
    assert len(commands) >= 4  # DDP (GPU and CPU), torchrun, performance
    for words in commands:
        cfg = printed_config(words[words.index("train.py") + 1:])
        assert cfg["model"]["class_path"].startswith("lightning_modules.") and cfg["data"]["class_path"], words


def test_the_docs_sbatch_command_runs_the_script_as_written(submit_dir):
    (words,) = doc_commands("sbatch")
    args = words[words.index("scripts/slurm_train.sbatch") + 1:]
    cfg = run_job(submit_dir, *args)
    assert cfg["model"]["class_path"] == "lightning_modules.CoTeaching"
    assert cfg["data"]["init_args"]["noise_rate"] == 0.5
