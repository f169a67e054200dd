#!/usr/bin/env python
"""Run a results matrix (noise settings x methods x seeds) through train.py and tabulate it.

    python scripts/results_matrix.py run    MATRIX.yaml              # every cell not yet done, one after another
    python scripts/results_matrix.py run    MATRIX.yaml --cell 3     # one cell (what a SLURM array task runs)
    python scripts/results_matrix.py run    MATRIX.yaml --cell sym50/ce/0   # the same by name: row/method/seed
    python scripts/results_matrix.py slurm  MATRIX.yaml              # write labels + an sbatch job-array script
    python scripts/results_matrix.py table  MATRIX.yaml              # results.md, results.csv, accuracy_vs_noise.png

MATRIX.yaml::

    out_dir: runs/matrix/cifar10_full
    configs: [configs/fast/cifar10.yaml]          # config stack of every cell
    args: [--data.init_args.val_size, "5000"]      # arguments of every cell
    seeds: [0, 1, 2]                               # training seeds (seed_everything); the noise is per row
    rows:                                          # a row = one noise setting
      - name: sym50
        noise_rate: 0.5                            # x of the plot (optional)
        args: [--data.init_args.noise_type, symmetric, --data.init_args.noise_rate, "0.5"]
        published: {coteaching: 74.49}             # figures to set beside ours (optional)
        seeds: [0, 1, 2]                           # optional: this row's seeds
      - name: sym50_cleaned
        labels: runs/cleanlab/sym50/noisy_labels.npz  # optional: the row trains on these saved labels
        args: []                                   # (e.g. scripts/confident_learning.py's corrected ones)
    methods:
      - name: ce
      - name: coteaching
        configs: [configs/fast/coteaching.yaml]
        args: []
        rows: [sym50]                              # optional: only these rows
      - name: cleanlab                             # a detector, not a training method: the cell runs
        confident_learning: {folds: 4}             # scripts/confident_learning.py (K runs of the stack above)
                                                   # and reports its detection only; its corrected labels
                                                   # (OUT/ROW/cleanlab/seedS/version_0/noisy_labels.npz)
                                                   # can be another row's ``labels``

Every method of a row trains on the same labels: before any cell of a row runs,
the row's ``noisy_labels.npz`` is drawn once, or copied from the row's ``labels``
(``OUT/ROW/noisy_labels.npz``), and every
cell gets it as ``noisy_labels_path``; the table checks each run's saved labels
against it. A cell is done when ``OUT/ROW/METHOD/seedS/version_0/test_results.json``
exists (a confident-learning cell: its ``detection.json``); a cell with a checkpoint
but no results resumes from ``last.ckpt`` (a confident-learning cell: from its
finished folds), so an interrupted matrix is simply run again. The test set chooses nothing: the table
reports ``test/acc`` (last epoch) and ``test_best/acc`` (checkpoint of best noisy
validation accuracy) as train.py writes them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"
CONFIDENT_LEARNING = REPO / "scripts" / "confident_learning.py"


@dataclass
class Cell:
    index: int
    row: dict
    method: dict
    seed: int
    folder: Path = field(default=Path())

    @property
    def run_dir(self) -> Path:
        return self.folder / "version_0"

    @property
    def detector(self) -> dict | None:
        """The method's ``confident_learning`` settings when the cell detects wrong labels instead of training."""
        return self.method.get("confident_learning")

    @property
    def done(self) -> bool:
        return (self.run_dir / ("detection.json" if self.detector else "test_results.json")).is_file()

    @property
    def saved_labels(self) -> Path:
        """The labels the cell's run saved (a confident-learning cell: those of its first fold)."""
        return self.run_dir / ("fold0/run" if self.detector else "") / "noisy_labels.npz"

    def saved_work(self) -> list[Path]:
        """The files whose newest write marks the last work a killed attempt kept."""
        if self.detector:
            return [*self.run_dir.glob("fold*/run/checkpoints/last.ckpt"), *self.run_dir.glob("fold*/run/heldout_*")]
        return [self.run_dir / "checkpoints" / "last.ckpt"]


def load_matrix(path: str | Path) -> dict:
    """Read and check a matrix file; errors name the bad entry."""
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with out_dir, rows and methods")
    for key in ("out_dir", "rows", "methods"):
        if key not in spec:
            raise ValueError(f"{path}: missing {key!r}")
    for kind in ("rows", "methods"):
        names = [entry.get("name") for entry in spec[kind]]
        if not names or any(not isinstance(n, str) or not n or "/" in n for n in names):
            raise ValueError(f"{path}: every entry of {kind} needs a name without '/', got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: duplicate {kind} names {names}")
    row_names = {row["name"] for row in spec["rows"]}
    for method in spec["methods"]:
        unknown = set(method.get("rows", [])) - row_names
        if unknown:
            raise ValueError(f"{path}: method {method['name']!r} names unknown rows {sorted(unknown)}")
        detector = method.get("confident_learning")
        if detector is not None:
            settings = detector if isinstance(detector, dict) else {}
            folds, fix = settings.get("folds"), settings.get("fix", "relabel")
            if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2 or fix not in ("relabel", "prune") \
                    or set(settings) - {"folds", "fix"}:
                raise ValueError(f"{path}: method {method['name']!r}: confident_learning takes folds (an integer "
                                 f">= 2) and fix (relabel or prune), got {detector}")
            method["confident_learning"] = {"folds": folds, "fix": fix}  # the default fix written out once
    spec.setdefault("configs", [])
    spec.setdefault("args", [])
    spec.setdefault("seeds", [0])
    return spec


def cells(spec: dict) -> list[Cell]:
    out, out_dir = [], Path(spec["out_dir"])
    for row in spec["rows"]:
        for method in spec["methods"]:
            if "rows" in method and row["name"] not in method["rows"]:
                continue
            for seed in row.get("seeds", spec["seeds"]):
                cell = Cell(len(out), row, method, int(seed))
                cell.folder = out_dir / row["name"] / method["name"] / f"seed{seed}"
                out.append(cell)
    return out


def row_labels_file(spec: dict, row: dict) -> Path:
    return Path(spec["out_dir"]) / row["name"] / "noisy_labels.npz"


def base_args(spec: dict, row: dict, method: dict | None = None) -> list[str]:
    args: list[str] = []
    for config in [*spec["configs"], *(method or {}).get("configs", [])]:
        args += ["--config", str(config)]
    return args + [str(a) for a in spec["args"]] + [str(a) for a in row.get("args", [])] + \
        [str(a) for a in (method or {}).get("args", [])]


def draw_row_labels(spec: dict, row: dict) -> Path:
    """Draw the row's noisy labels once, with the row's data settings, and write them (atomically)."""
    path = row_labels_file(spec, row)
    if path.is_file():
        return path
    from datamodules.atomic_files import atomic_write  # imported here: `table` needs no torch
    if "labels" in row:  # a copy, so that the row's digest and the runs' saved labels are checked as any row's
        if not Path(row["labels"]).is_file():
            raise SystemExit(f"row {row['name']!r}: its labels {row['labels']} do not exist (write them first)")
        source = Path(row["labels"]).read_bytes()
        atomic_write(path, lambda f: f.write(source))
        return path
    from datamodules.noisy_dataset import save_noisy_labels
    from train import main

    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this script's arguments
    try:
        cli = main([*base_args(spec, row), "--trainer.logger", "false"], run=False)
    finally:
        sys.argv = argv
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_noisy_labels(dm, path)
    return path


def cell_command(spec: dict, cell: Cell) -> list[str]:
    labels = row_labels_file(spec, cell.row)
    train_args = [*base_args(spec, cell.row, cell.method), "--seed_everything", str(cell.seed),
                  "--data.init_args.noisy_labels_path", str(labels)]
    if cell.detector:  # the script names its fold runs' folders and resumes them itself
        return [sys.executable, str(CONFIDENT_LEARNING), "--out", str(cell.run_dir),
                "--folds", str(cell.detector["folds"]), "--fix", cell.detector["fix"],
                "--", *train_args]
    cmd = [sys.executable, str(TRAIN), "fit", *train_args,
           "--trainer.logger.init_args.save_dir", str(cell.folder.parent),
           "--trainer.logger.init_args.name", cell.folder.name,
           "--trainer.logger.init_args.version", "0"]
    if (cell.run_dir / "checkpoints" / "last.ckpt").is_file():
        cmd += ["--ckpt_path", "last"]
    return cmd


def run_cell(spec: dict, cell: Cell) -> None:
    if cell.done:
        print(f"[{cell.index}] {cell.row['name']} / {cell.method['name']} / seed {cell.seed}: done, skipped")
        return
    draw_row_labels(spec, cell.row)
    cmd = cell_command(spec, cell)
    print(f"[{cell.index}] {cell.row['name']} / {cell.method['name']} / seed {cell.seed}: {' '.join(cmd[1:])}",
          flush=True)
    cell.folder.mkdir(parents=True, exist_ok=True)
    timing = cell.folder / "wall_time.json"
    earlier = kept_seconds(timing, cell.saved_work())
    start = time.time()
    # left behind if this attempt is killed: the next one then counts it up to its last checkpoint
    timing.write_text(json.dumps({"seconds": earlier, "running_since": start}))
    with open(cell.folder / "train.log", "a") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"cell {cell.index} failed (exit {proc.returncode}); see {cell.folder / 'train.log'}")
    timing.write_text(json.dumps({"seconds": earlier + time.time() - start}))


def kept_seconds(timing: Path, saved_work: list[Path]) -> float:
    """Wall time of a cell's earlier attempts whose work was kept: a finished attempt in full, an
    interrupted one (``running_since`` still set) up to the newest of its saved files (checkpoints,
    finished folds), since what it did after that is done again by the resumed run."""
    if not timing.is_file():
        return 0.0
    record = json.loads(timing.read_text())
    seconds = float(record.get("seconds", 0.0))
    since = record.get("running_since")
    saved = [p.stat().st_mtime for p in saved_work if p.is_file()]
    if since is not None and saved:
        seconds += max(0.0, max(saved) - since)
    return seconds


def labels_digest(path: Path) -> str:
    with np.load(path, allow_pickle=False) as z:
        return hashlib.sha256(np.ascontiguousarray(z["noisy_targets"]).tobytes()).hexdigest()[:12]


def labels_noise_type(path: Path) -> str | None:
    """The noise model a label file was drawn with (``symmetric``, ``pairflip``, ``human``, ...)."""
    with np.load(path, allow_pickle=False) as z:
        return str(z["noise_type"]) if "noise_type" in z.files else None


def collect(spec: dict) -> list[dict]:
    """One record per (row, method): accuracies over the seeds done, labels checked against the row's."""
    records = []
    all_cells = cells(spec)
    for row in spec["rows"]:
        row_file = row_labels_file(spec, row)
        row_digest = labels_digest(row_file) if row_file.is_file() else None
        noise_type = labels_noise_type(row_file) if row_file.is_file() else None
        for method in spec["methods"]:
            if "rows" in method and row["name"] not in method["rows"]:
                continue
            done = [c for c in all_cells if c.row is row and c.method is method and c.done]
            rec = {"row": row["name"], "method": method["name"], "noise_rate": row.get("noise_rate"),
                   "noise_type": noise_type,
                   "seeds": [c.seed for c in done], "labels": row_digest,
                   "published": (row.get("published") or {}).get(method["name"])}
            for key, prefix in (("last", "test"), ("best_val", "test_best")):
                accs = []
                for c in done:
                    if c.detector:  # detects, trains no model of its own to test
                        continue
                    results = json.loads((c.run_dir / "test_results.json").read_text())
                    acc = results.get(prefix, {}).get(f"{prefix}/acc")
                    if acc is not None:
                        accs.append(100.0 * acc)
                rec[key] = accs
            for key in DETECTION_KEYS:  # callbacks.MislabelDetection's or confident learning's detection.json
                rec[f"detection_{key}"] = [
                    100.0 * float(d[key]) for c in done if (d := read_detection(c)) is not None
                    and d.get(key) is not None and d[key] == d[key]]  # NaN: nothing flagged
            rec["wall_s"] = [json.loads((c.folder / "wall_time.json").read_text())["seconds"]
                             for c in done if (c.folder / "wall_time.json").is_file()]
            for c in done:
                saved = c.saved_labels
                if row_digest is None or not saved.is_file() or labels_digest(saved) != row_digest:
                    raise SystemExit(f"{c.folder}: trained on other labels than {row_file}")
            records.append(rec)
    return records


DETECTION_KEYS = ("auroc", "precision", "recall")


def read_detection(cell: Cell) -> dict | None:
    path = cell.run_dir / ("" if cell.detector else "detection") / "detection.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_table(spec: dict) -> list[dict]:
    records = collect(spec)
    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    header = ["noise", "method", "seeds", "test acc, last epoch (%)", "test acc, best noisy val (%)",
              "published (%)", "flipped-label detection AUROC / precision / recall (%)", "wall time per run (s)",
              "labels sha256"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["noise", "method", "seed_count", "last_mean", "last_std", "best_val_mean", "best_val_std",
                         "published", *(f"detection_{k}_mean" for k in DETECTION_KEYS), "wall_s_mean",
                         "labels_sha256"])
        for r in records:
            wall = f"{statistics.mean(r['wall_s']):.0f}" if r["wall_s"] else ""
            pub = "" if r["published"] is None else f"{r['published']:.2f}"
            detection = [statistics.mean(r[f"detection_{k}"]) if r[f"detection_{k}"] else None
                         for k in DETECTION_KEYS]
            shown = " / ".join("-" if v is None else f"{v:.1f}" for v in detection) if any(
                v is not None for v in detection) else ""
            lines.append(f"| {r['row']} | {r['method']} | {len(r['seeds'])} | {fmt(r['last'])} | "
                         f"{fmt(r['best_val'])} | {pub} | {shown} | {wall} | {r['labels'] or ''} |")
            stats = []
            for key in ("last", "best_val"):
                v = r[key]
                stats += [f"{statistics.mean(v):.4f}" if v else "", f"{statistics.stdev(v):.4f}" if len(v) > 1 else ""]
            detection_csv = ["" if v is None else f"{v:.2f}" for v in detection]
            writer.writerow([r["row"], r["method"], len(r["seeds"]), *stats, pub, *detection_csv, wall,
                             r["labels"] or ""])
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(records, out / "accuracy_vs_noise.png")
    return records


def curves(records: list[dict]) -> dict[tuple[str, str], list[tuple[float, float, float]]]:
    """(method, noise type) -> [(noise rate, mean, spread)] by rate: a line joins rows of one noise
    model only, since 45% pair flips and 50% symmetric flips are not points of one curve."""
    out: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for r in records:
        if r["last"] and r["noise_rate"] is not None:
            spread = statistics.stdev(r["last"]) if len(r["last"]) > 1 else 0.0
            out.setdefault((r["method"], r["noise_type"] or "?"), []).append(
                (float(r["noise_rate"]), statistics.mean(r["last"]), spread))
    return {key: sorted(pts) for key, pts in out.items()}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    lines = curves(records)
    methods = list(dict.fromkeys(method for method, _ in lines))
    noise_types = list(dict.fromkeys(noise_type for _, noise_type in lines))
    for (method, noise_type), pts in lines.items():
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, capsize=3, color=f"C{methods.index(method) % 10}",
                    marker="osD^vP*X"[noise_types.index(noise_type) % 8],
                    linestyle=["-", "--", ":", "-."][noise_types.index(noise_type) % 4],
                    label=f"{method}, {noise_type}")
    ax.set_xlabel("noise rate")
    ax.set_ylabel("test accuracy, last epoch (%)")
    ax.set_title("Test accuracy against label noise")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_slurm(spec: dict, matrix_path: str) -> Path:
    """Draw every row's labels here (cheap), then write an sbatch array with one task per cell."""
    for row in spec["rows"]:
        draw_row_labels(spec, row)
    n = len(cells(spec))
    out = Path(spec["out_dir"])
    script = out / "matrix.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=noisy-matrix
#SBATCH --array=0-{n - 1}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=SIGUSR1@90
#SBATCH --output={out.resolve()}/slurm-%A_%a.out
cd {REPO}
srun --cpus-per-task=$SLURM_CPUS_PER_TASK python scripts/results_matrix.py run \\
    {Path(matrix_path).resolve()} --cell $SLURM_ARRAY_TASK_ID
""")
    return script


def find_cell(all_cells: list[Cell], key: str) -> Cell:
    """The cell named by its index (``3``) or by ``ROW/METHOD/SEED`` (``sym50/ce/0``)."""
    if key.isdigit():
        if int(key) >= len(all_cells):
            raise SystemExit(f"--cell must be in 0..{len(all_cells) - 1} or ROW/METHOD/SEED, got {key}")
        return all_cells[int(key)]
    named = {f"{c.row['name']}/{c.method['name']}/{c.seed}": c for c in all_cells}
    if key not in named:
        raise SystemExit(f"--cell {key}: no such cell; `list` shows them (ROW/METHOD/SEED, e.g. {next(iter(named))})")
    return named[key]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "table", "slurm", "list"])
    parser.add_argument("matrix", help="the matrix YAML")
    parser.add_argument("--cell", help="run only this cell: its index from `list`, or ROW/METHOD/SEED (a name "
                        "stays the same cell when rows or methods are added to the file; an index may not)")
    args = parser.parse_args(argv)
    try:
        spec = load_matrix(args.matrix)
    except ValueError as err:  # a bad matrix file: its message, not a traceback
        parser.error(str(err))
    todo = cells(spec)
    if args.command == "list":
        for c in todo:
            print(f"{c.index}\t{c.row['name']}\t{c.method['name']}\tseed {c.seed}\t{'done' if c.done else 'todo'}")
    elif args.command == "run":
        if args.cell is not None:
            todo = [find_cell(todo, args.cell)]
        for cell in todo:
            run_cell(spec, cell)
        write_table(spec)
    elif args.command == "slurm":
        print(f"wrote {write_slurm(spec, args.matrix)}; submit it with sbatch")
    else:
        write_table(spec)
        print((Path(spec["out_dir"]) / "results.md").read_text())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
