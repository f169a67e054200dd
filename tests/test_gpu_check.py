"""scripts/gpu_check.sh at smoke size on the CPU: every step runs and the table reports each one
(the steps that run suite tests select them; the suite itself runs those tests)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ["bench", "fast_cifar10", "coteaching_reference", "coteaching_plus_auto_half", "simclr_resnet18",
         "mwnet_compile_refused", "mwnet_half", "resume_exact", "ddp_matrix"]


def test_gpu_check_runs_every_step_at_smoke_size(tmp_path, fake_cifar10_dir):
    out = tmp_path / "out"
    env = dict(os.environ, DATA_DIR=str(fake_cifar10_dir), OUT=str(out), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--smoke"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| (\w+) \| (\w+) \| ([\d.]+) \| ([\d.]*) \|$",
                                                             proc.stdout, re.M)}
    assert list(rows) == STEPS
    assert all(r[0] == "ok" and float(r[1]) > 0 for r in rows.values())
    assert rows["fast_cifar10"][2] != ""  # the fast recipe reports its test accuracy
    # the suite's kill-and-resume and 2-process steps select one test each at smoke size (collected, not rerun:
    # the suite runs them itself)
    for step, test in [("resume_exact", "test_resume.py::test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run"),
                       ("ddp_matrix", "test_ddp_inspect.py::test_quick_with_inspect_finishes_on_two_processes_and_")]:
        log = (out / f"{step}.log").read_text()
        assert test in log and re.search(r"^1/\d+ tests? collected", log, re.M), log[-2000:]
    assert re.search(r"airbench\s+bf16\s+[\d.]+ s/epoch\s+[\d.]+x vs fp32", proc.stdout)


def test_gpu_check_refuses_an_unknown_device():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "tpu"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--device must be gpu or cpu, got tpu" in proc.stderr
