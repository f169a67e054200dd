#!/usr/bin/env python
"""Co-teaching against CE on real CIFAR-10 images at CPU scale (docs/results.md).

    python scripts/coteaching_vs_ce.py                 # CE first, then co-teaching on CE's noisy labels
    python scripts/coteaching_vs_ce.py --parallel      # start co-teaching as soon as CE has saved its labels
    python scripts/coteaching_vs_ce.py --summarise-only --out runs/coteaching_vs_ce

Both runs use the same backbone, data subset, epoch budget and the very same noisy labels
(the CE run's ``noisy_labels.npz`` is passed to co-teaching as ``data.noisy_labels_path``).
Extra arguments after ``--`` go to both ``train.py fit`` calls. Prints a markdown table:
test accuracy of the last and of the best-validation checkpoint (chosen on noisy validation
labels, never on the test set), co-teaching's label precision, wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"ce": "configs/coteaching/cpu_sym50_ce.yaml", "coteaching": "configs/coteaching/cpu_sym50.yaml"}
NAMES = {"ce": "cpu_sym50_ce", "coteaching": "cpu_sym50_coteaching"}


def latest_version(out: Path, name: str) -> Path:
    versions = sorted((out / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"no run under {out / name}")
    return versions[-1]


def start(method: str, out: Path, extra: list[str], log: Path) -> subprocess.Popen:
    # train.py's checkpoint callback writes a true last.ckpt every epoch (callbacks/best_and_last.py)
    cmd = [sys.executable, "train.py", "fit", "--config", CONFIGS[method],
           "--trainer.logger.init_args.save_dir", str(out), *extra]
    print("$", " ".join(cmd), f"> {log}", flush=True)
    return subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, method: str, t0: float) -> float:
    if proc.wait() != 0:
        raise SystemExit(f"{method} run failed (exit {proc.returncode}); see its log")
    return time.time() - t0


def scalars(run: Path, tag: str) -> list[float]:
    """Epoch values of one TensorBoard scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    return [e.value for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def ckpt_epoch(path: str) -> int:
    """The epoch a checkpoint holds (runs made before callbacks/best_and_last.py have a stale last.ckpt)."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def row(method: str, run: Path, wall: float | None) -> str:
    res = json.loads((run / "test_results.json").read_text())
    last, best = res["test"]["test/acc"], res["test_best"]["test_best/acc"]
    last_epoch, best_epoch = ckpt_epoch(res["test"]["checkpoint"]), ckpt_epoch(res["test_best"]["checkpoint"])
    prec = scalars(run, "train/label_precision_net1")
    prec_txt = f"{prec[0]:.3f} -> {prec[-1]:.3f} (max {max(prec):.3f})" if prec else "n/a"
    val = scalars(run, "val/acc")
    wall_txt = f"{wall / 60:.1f} min" if wall is not None else "see log"
    return (f"| {method} | {100 * last:.2f} (epoch {last_epoch}) | {100 * best:.2f} (epoch {best_epoch}) | "
            f"{100 * max(val):.2f} | "
            f"{prec_txt} | {wall_txt} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/coteaching_vs_ce", help="log/checkpoint folder (save_dir)")
    p.add_argument("--parallel", action="store_true", help="run both at once (co-teaching waits for CE's labels)")
    p.add_argument("--summarise-only", action="store_true", help="only print the tables of the latest runs")
    p.add_argument("--curves-only", action="store_true", help="only the per-epoch table (runs still going)")
    p.add_argument("extra", nargs="*", help="extra train.py arguments for both runs (after --)")
    args = p.parse_args()
    out = (REPO / args.out).resolve()
    walls: dict[str, float | None] = {"ce": None, "coteaching": None}
    if args.curves_only:
        print(curves(latest_version(out, NAMES["ce"]), latest_version(out, NAMES["coteaching"])))
        return
    if not args.summarise_only:
        out.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        t_ce = time.time()
        ce = start("ce", out, args.extra, out / "ce.log")
        labels = None
        while labels is None:  # the CE run writes its noisy labels during setup
            if ce.poll() is not None and ce.returncode != 0:
                raise SystemExit(f"CE run failed; see {out / 'ce.log'}")
            try:
                cand = latest_version(out, NAMES["ce"]) / "noisy_labels.npz"
                labels = cand if cand.is_file() and cand.stat().st_mtime >= t_ce else None
            except FileNotFoundError:
                pass
            if labels is None:
                if not args.parallel and ce.poll() is None:
                    ce.wait()
                time.sleep(2)
        if not args.parallel:
            walls["ce"] = wait(ce, "ce", t_ce)
        t_ct = time.time()
        ct = start("coteaching", out, [*args.extra, "--data.init_args.noisy_labels_path", str(labels)],
                   out / "coteaching.log")
        if args.parallel:
            walls["ce"] = wait(ce, "ce", t_ce)
        walls["coteaching"] = wait(ct, "coteaching", t_ct)
    print("| method | test acc, last ckpt (%) | test acc, best-val ckpt (%) | best val acc, noisy (%) | "
          "label precision net 1, first -> last epoch | wall time |")
    print("|---|---|---|---|---|---|")
    for method in ("ce", "coteaching"):
        print(row(method, latest_version(out, NAMES[method]), walls[method]))
    print()
    print(curves(latest_version(out, NAMES["ce"]), latest_version(out, NAMES["coteaching"])))


def curves(ce: Path, ct: Path) -> str:
    """Per-epoch noisy-validation accuracy of both, and co-teaching's forget rate and label precision."""
    cols = [scalars(ce, "val/acc"), scalars(ct, "val/acc"), scalars(ct, "val/acc_net2"),
            scalars(ct, "train/forget_rate"), scalars(ct, "train/label_precision_net1"),
            scalars(ct, "train/label_precision_net2"), scalars(ce, "train/acc_noisy"), scalars(ce, "train/acc_clean")]
    lines = ["| epoch | CE val acc | co-teaching val acc net 1 | net 2 | R(t) | label precision net 1 | net 2 "
             "| CE train acc vs noisy labels | vs clean labels |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in range(max(len(c) for c in cols)):
        cells = [f"{c[e]:.3f}" if e < len(c) else "" for c in cols]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
