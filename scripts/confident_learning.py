#!/usr/bin/env python
"""Confident learning as the reference detector of wrong labels, and the cleaned labels it yields.

    python scripts/confident_learning.py --out runs/cl_sym50 --folds 4 -- \\
        --config configs/quick.yaml --data.init_args.noise_rate 0.5

1. K runs of ``train.py fit`` with the given arguments (after ``--``), run k holding out fold k of the
   training set (``data.init_args.num_folds`` / ``fold``) and writing its out-of-sample predicted
   probabilities (``callbacks.HeldOutPredictions``). All runs train on the same
   labels: run 0 saves its ``noisy_labels.npz`` and the others read it (``noisy_labels_path``).
2. The joined probabilities go to cleanlab's ``find_label_issues`` (Northcutt et al., JAIR 2021;
   ``pip install -e ".[cleanlab]"``), ranked by self-confidence.
3. Written to ``--out``: ``suspected_mislabelled.csv`` (index, given label, suggested label = argmax of
   the out-of-sample probabilities, score = their probability of the given label), ``detection.json``
   (AUROC of that score and precision / recall / F1 of cleanlab's flags against the known flips; the
   training labels' measured noise before and after the fix), and ``noisy_labels.npz`` with the flagged
   samples relabelled to the suggestion (``--fix relabel``, the default) or left out of training
   (``--fix prune``): train any method on it with ``--data.init_args.noisy_labels_path <out>/noisy_labels.npz``.

Called again with the same ``--out``, it skips the folds that wrote their predictions and resumes a
fold that was killed from its ``last.ckpt``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from callbacks.cross_validation import HELDOUT_FILE
from callbacks.detection import detection_metrics, write_suspected_csv
from datamodules.corrected_labels import measured_noise, write_corrected_labels

REPO = Path(__file__).resolve().parents[1]


def fold_args(out: Path, folds: int, fold: int, labels: Path | None) -> list[str]:
    """train.py arguments that make run ``fold`` hold out that fold and log to ``out/fold{fold}``."""
    args = [
        "--data.init_args.num_folds", str(folds), "--data.init_args.fold", str(fold),
        "--trainer.callbacks+=callbacks.HeldOutPredictions",
        "--trainer.logger.class_path", "pytorch_lightning.loggers.TensorBoardLogger",
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", f"fold{fold}",
        "--trainer.logger.init_args.version", "run",
    ]
    if labels is not None:
        args += ["--data.init_args.noisy_labels_path", str(labels)]
    return args


def join_folds(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, probs [M, C], given) over all held-out folds, sorted by index; each sample exactly once."""
    parts = [np.load(f, allow_pickle=False) for f in files]
    index = np.concatenate([p["index"] for p in parts])
    if len(np.unique(index)) != len(index):
        raise ValueError("the held-out folds overlap: a sample was predicted by more than one run")
    order = np.argsort(index)
    probs = np.concatenate([p["probs"] for p in parts])[order]
    given = np.concatenate([p["given"] for p in parts])[order]
    return index[order], probs, given


def find_issues(given: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Positions of cleanlab's label issues (``find_label_issues``, default ``prune_by_noise_rate``)."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError as err:
        raise SystemExit("cleanlab is not installed: pip install -e \".[cleanlab]\"") from err
    return np.asarray(find_label_issues(given, probs, return_indices_ranked_by="self_confidence"), dtype=np.int64)


def report(out: Path, labels_file: Path, index: np.ndarray, probs: np.ndarray, given: np.ndarray,
           issues: np.ndarray, prune: bool = False) -> dict:
    """Write the CSV, detection.json and the corrected noisy_labels.npz; return the summary."""
    suggested = probs.argmax(1)
    score = probs[np.arange(len(given)), given]  # self-confidence: out-of-sample p(given label)
    rows = [(int(index[i]), int(given[i]), int(suggested[i]), float(score[i])) for i in issues]
    write_suspected_csv(out / "suspected_mislabelled.csv", rows)
    with np.load(labels_file, allow_pickle=False) as z:
        clean = z["clean_targets"][index]
    flagged = np.zeros(len(index), dtype=bool)
    flagged[issues] = True
    result = detection_metrics(torch.from_numpy(score), torch.from_numpy(given != clean),
                               flagged=torch.from_numpy(flagged))
    result.update(score="out_of_sample_self_confidence", method="cleanlab.find_label_issues", threshold=None)
    fixed = out / "noisy_labels.npz"
    result.update(write_corrected_labels(labels_file, fixed, index[issues], suggested[issues], prune=prune))
    # the training set's labels (every sample some fold held out), validation images not counted
    result.update(train_noise_before=measured_noise(labels_file, among=index),
                  train_noise_after=measured_noise(fixed, among=index))
    (out / "detection.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the fold runs and the results")
    parser.add_argument("--folds", type=int, default=4, help="K of the K-fold cross-validation (>= 2)")
    parser.add_argument("--fix", choices=["relabel", "prune"], default="relabel",
                        help="what the corrected noisy_labels.npz does with a flagged sample")
    args = parser.parse_args(ours)
    if args.folds < 2:
        parser.error(f"--folds must be >= 2, got {args.folds}")
    if not train_args:
        parser.error("give the train.py arguments after '--' (at least a --config)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    labels: Path | None = None
    for fold in range(args.folds):
        run = out / f"fold{fold}" / "run"
        if (run / HELDOUT_FILE).is_file():  # finished by an earlier call: an interrupted K-fold resumes
            print(f"fold {fold + 1}/{args.folds}: done ({run / HELDOUT_FILE})", flush=True)
        else:
            cmd = [sys.executable, str(REPO / "train.py"), "fit", *train_args,
                   *fold_args(out, args.folds, fold, labels)]
            if (run / "checkpoints" / "last.ckpt").is_file():
                cmd += ["--ckpt_path", "last"]  # killed mid-run: resume it exactly
            print(f"fold {fold + 1}/{args.folds}: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True, env=env)
        if labels is None:
            labels = out / "fold0" / "run" / "noisy_labels.npz"
    index, probs, given = join_folds([out / f"fold{k}" / "run" / HELDOUT_FILE for k in range(args.folds)])
    result = report(out, labels, index, probs, given, find_issues(given, probs), prune=args.fix == "prune")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
