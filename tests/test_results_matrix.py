"""scripts/results_matrix.py: every cell through train.py, one label file per row, resumable, tables."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "results_matrix.py"


def _matrix(tmp_path: Path, data_dir: Path) -> Path:
    spec = {
        "out_dir": str(tmp_path / "out"),
        "configs": [str(REPO / "tests" / "configs" / "tiny.yaml")],
        "args": ["--data.init_args.data_dir", str(data_dir), "--data.init_args.download", "false",
                 "--data.init_args.train_subset", "100", "--data.init_args.val_size", "100",
                 "--data.init_args.batch_size", "50", "--trainer.max_epochs", "1",
                 "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
                 "--model.init_args.backbone.class_path", "lightning_modules.backbones.CNN",
                 "--model.init_args.backbone.init_args.width", "0.0625"],
        "seeds": [0],
        "rows": [
            {"name": "sym40", "noise_rate": 0.4, "published": {"gce": 12.5},
             "args": ["--data.init_args.noise_type", "symmetric", "--data.init_args.noise_rate", "0.4"]},
            {"name": "pair20", "noise_rate": 0.2,
             "args": ["--data.init_args.noise_type", "pairflip", "--data.init_args.noise_rate", "0.2"]},
        ],
        # gce's own noise seed would draw other labels: the row's label file must override it
        # ce also measures how well it finds the flipped labels: the table's detection columns
        "methods": [{"name": "ce", "args": ["--trainer.callbacks+=callbacks.MislabelDetection"]},
                    {"name": "gce", "args": ["--model.init_args.loss", "gce", "--data.init_args.noise_seed", "7"]}],
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _targets(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z["noisy_targets"].copy(), z["clean_targets"].copy()


def test_matrix_runs_every_cell_on_its_rows_labels_and_tabulates(tmp_path, fake_cifar10_dir):
    matrix = _matrix(tmp_path, fake_cifar10_dir)
    _run("run", str(matrix))
    out = tmp_path / "out"
    rows = {}
    for row in ("sym40", "pair20"):
        noisy, clean = _targets(out / row / "noisy_labels.npz")
        rows[row] = noisy
        for method in ("ce", "gce"):
            run_noisy, _ = _targets(out / row / method / "seed0" / "version_0" / "noisy_labels.npz")
            assert np.array_equal(run_noisy, noisy)  # every method of a row trained on the row's labels
    assert not np.array_equal(rows["sym40"], rows["pair20"])
    noisy, clean = _targets(out / "pair20" / "noisy_labels.npz")
    flipped = noisy != clean
    assert np.array_equal(noisy[flipped], (clean[flipped] + 1) % 10)  # pairflip: c -> c + 1

    with open(out / "results.csv") as f:
        table = {(r["noise"], r["method"]): r for r in csv.DictReader(f)}
    assert len(table) == 4
    for (row, method), rec in table.items():
        results = json.loads((out / row / method / "seed0" / "version_0" / "test_results.json").read_text())
        assert float(rec["last_mean"]) == pytest.approx(100 * results["test"]["test/acc"], abs=1e-4)
        assert float(rec["best_val_mean"]) == pytest.approx(100 * results["test_best"]["test_best/acc"], abs=1e-4)
        assert float(rec["wall_s_mean"]) > 0
        detection = out / row / method / "seed0" / "version_0" / "detection" / "detection.json"
        assert detection.is_file() == (method == "ce")
        if method == "ce":
            d = json.loads(detection.read_text())
            for key in ("auroc", "precision", "recall"):
                expected = "" if d[key] != d[key] else f"{100 * d[key]:.2f}"  # NaN: nothing flagged
                assert rec[f"detection_{key}_mean"] == expected
        else:
            assert rec["detection_auroc_mean"] == ""
    assert table[("sym40", "gce")]["published"] == "12.50" and table[("sym40", "ce")]["published"] == ""
    assert "| sym40 | gce | 1 |" in (out / "results.md").read_text()
    png = (out / "accuracy_vs_noise.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    # an interrupted matrix is run again: nothing done is redone
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed0/version_0/test_results.json")}
    again = _run("run", str(matrix))
    assert again.stdout.count("done, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a cell that trained on other labels is refused by the table
    other = out / "pair20" / "gce" / "seed0" / "version_0" / "noisy_labels.npz"
    with np.load(other) as z:
        data = {k: z[k] for k in z.files}
    data["noisy_targets"] = (data["noisy_targets"] + 1) % 10
    np.savez(other, **data)
    proc = subprocess.run([sys.executable, str(SCRIPT), "table", str(matrix)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "pair20/gce/seed0: trained on other labels" in proc.stderr


def test_confident_learning_is_a_matrix_cell_whose_labels_another_row_trains_on(tmp_path, fake_cifar10_dir):
    pytest.importorskip("cleanlab", reason="cleanlab is an optional extra: pip install -e '.[cleanlab]'")
    spec = yaml.safe_load(_matrix(tmp_path, fake_cifar10_dir).read_text())
    cleaned = tmp_path / "out" / "sym40" / "cleanlab" / "seed0" / "version_0" / "noisy_labels.npz"
    spec["rows"] = [spec["rows"][0], {"name": "sym40_cleaned", "labels": str(cleaned)}]
    spec["methods"] = [{"name": "ce"}, {"name": "cleanlab", "confident_learning": {"folds": 2}, "rows": ["sym40"]}]
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump(spec))
    first = _run("run", str(matrix))
    out = tmp_path / "out"
    run = out / "sym40" / "cleanlab" / "seed0" / "version_0"
    held = [np.load(run / f"fold{k}" / "run" / "heldout_probs.npz")["index"] for k in (0, 1)]
    assert len(np.intersect1d(*held)) == 0 and len(held[0]) + len(held[1]) == 100  # 2 folds of the 100 images
    for k in (0, 1):  # both folds trained on the row's labels
        assert np.array_equal(_targets(run / f"fold{k}" / "run" / "noisy_labels.npz")[0],
                              _targets(out / "sym40" / "noisy_labels.npz")[0])
    # the second row trains on what confident learning wrote
    assert (out / "sym40_cleaned" / "noisy_labels.npz").read_bytes() == cleaned.read_bytes()
    assert np.array_equal(_targets(out / "sym40_cleaned" / "ce" / "seed0" / "version_0" / "noisy_labels.npz")[0],
                          _targets(cleaned)[0])
    with open(out / "results.csv") as f:
        table = {(r["noise"], r["method"]): r for r in csv.DictReader(f)}
    assert set(table) == {("sym40", "ce"), ("sym40", "cleanlab"), ("sym40_cleaned", "ce")}
    rec, d = table[("sym40", "cleanlab")], json.loads((run / "detection.json").read_text())
    assert rec["seed_count"] == "1" and rec["last_mean"] == "" and rec["best_val_mean"] == ""  # no model tested
    for key in ("auroc", "precision", "recall"):
        expected = "" if d[key] != d[key] else f"{100 * d[key]:.2f}"
        assert rec[f"detection_{key}_mean"] == expected
    assert float(rec["wall_s_mean"]) > 0
    log = run.parent / "train.log"
    assert log.read_text().count("fold 1/2: ") == 1 and "cleanlab / seed 0" in first.stdout
    stamp = log.stat().st_mtime_ns
    again = _run("run", str(matrix))  # done: not run again
    assert again.stdout.count("done, skipped") == 3 and log.stat().st_mtime_ns == stamp


def test_matrix_writes_a_slurm_array_with_one_task_per_cell(tmp_path, fake_cifar10_dir):
    matrix = _matrix(tmp_path, fake_cifar10_dir)
    _run("slurm", str(matrix))
    script = (tmp_path / "out" / "matrix.sbatch").read_text().replace("\\\n    ", "")  # join continued lines
    assert "#SBATCH --array=0-3" in script
    assert f"scripts/results_matrix.py run {matrix.resolve()} --cell $SLURM_ARRAY_TASK_ID" in script
    assert (tmp_path / "out" / "sym40" / "noisy_labels.npz").is_file()  # labels drawn before any task starts


@pytest.mark.parametrize("spec, message", [
    ({"rows": [{"name": "a"}], "methods": [{"name": "m"}]}, "missing 'out_dir'"),
    ({"out_dir": "x", "rows": [{"name": "a"}, {"name": "a"}], "methods": [{"name": "m"}]}, "duplicate rows"),
    ({"out_dir": "x", "rows": [{"name": "a/b"}], "methods": [{"name": "m"}]}, "needs a name without '/'"),
    ({"out_dir": "x", "rows": [{"name": "a"}], "methods": [{"name": "cl", "confident_learning": {"folds": 1}}]},
     "method 'cl': confident_learning takes folds (an integer >= 2) and fix (relabel or prune), got {'folds': 1}"),
    ({"out_dir": "x", "rows": [{"name": "a"}], "methods": [{"name": "cl", "confident_learning": 4}]},
     "confident_learning takes folds (an integer >= 2) and fix (relabel or prune), got 4"),
    ({"out_dir": "x", "rows": [{"name": "a"}],
      "methods": [{"name": "cl", "confident_learning": {"folds": 3, "fix": "drop"}}]},
     "got {'fix': 'drop', 'folds': 3}"),
])
def test_matrix_file_errors_name_the_problem(tmp_path, spec, message):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, str(SCRIPT), "list", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def _module(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_matrix", SCRIPT)
    matrix = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "results_matrix", matrix)  # its dataclasses look themselves up there
    spec.loader.exec_module(matrix)
    return matrix


def test_a_row_with_saved_labels_trains_on_a_copy_of_them(tmp_path, monkeypatch):
    matrix = _module(monkeypatch)
    source = tmp_path / "cleaned.npz"
    np.savez(source, noisy_targets=np.array([3, 1, 2]), clean_targets=np.array([3, 1, 1]))
    spec = {"out_dir": str(tmp_path / "out"), "rows": [{"name": "cleaned", "labels": str(source)}]}
    path = matrix.draw_row_labels(spec, spec["rows"][0])
    assert path == tmp_path / "out" / "cleaned" / "noisy_labels.npz"
    assert path.read_bytes() == source.read_bytes()
    spec["rows"][0]["labels"] = str(tmp_path / "missing.npz")
    path.unlink()
    with pytest.raises(SystemExit, match="row 'cleaned': its labels .*missing.npz do not exist"):
        matrix.draw_row_labels(spec, spec["rows"][0])
    assert not path.exists()


def test_wall_time_of_a_resumed_cell_counts_each_attempt_up_to_the_work_it_kept(tmp_path, monkeypatch):
    import os

    matrix = _module(monkeypatch)
    timing, ckpt, fold = tmp_path / "wall_time.json", tmp_path / "last.ckpt", tmp_path / "heldout_probs.npz"
    assert matrix.kept_seconds(timing, [ckpt]) == 0.0  # never started
    timing.write_text(json.dumps({"seconds": 100.0}))
    assert matrix.kept_seconds(timing, [ckpt]) == 100.0  # finished attempts
    # an attempt started at t = 5000 and was killed; its last checkpoint was written at t = 5600
    timing.write_text(json.dumps({"seconds": 100.0, "running_since": 5000.0}))
    assert matrix.kept_seconds(timing, [ckpt]) == 100.0  # nothing saved yet
    ckpt.write_bytes(b"")
    os.utime(ckpt, (5600.0, 5600.0))
    assert matrix.kept_seconds(timing, [ckpt]) == pytest.approx(700.0)
    fold.write_bytes(b"")  # a later saved file (a finished fold) kept more of the attempt
    os.utime(fold, (5900.0, 5900.0))
    assert matrix.kept_seconds(timing, [ckpt, fold]) == pytest.approx(1000.0)
    os.utime(ckpt, (4000.0, 4000.0))  # killed before it saved anything: its time bought nothing
    assert matrix.kept_seconds(timing, [ckpt]) == pytest.approx(100.0)


def test_a_cell_is_found_by_index_or_by_row_method_seed(tmp_path, monkeypatch):
    matrix = _module(monkeypatch)
    spec = {"out_dir": str(tmp_path), "seeds": [0, 1],
            "rows": [{"name": "sym50"}, {"name": "worst"}], "methods": [{"name": "ce"}, {"name": "gce"}]}
    all_cells = matrix.cells(spec)
    cell = matrix.find_cell(all_cells, "worst/gce/1")
    assert (cell.row["name"], cell.method["name"], cell.seed, cell.index) == ("worst", "gce", 1, 7)
    assert matrix.find_cell(all_cells, "2") is all_cells[2]
    with pytest.raises(SystemExit, match="--cell sym50/gce/5: no such cell"):
        matrix.find_cell(all_cells, "sym50/gce/5")
    with pytest.raises(SystemExit, match="--cell must be in 0..7 or ROW/METHOD/SEED, got 8"):
        matrix.find_cell(all_cells, "8")


def test_the_plot_joins_rows_of_one_noise_model_only(tmp_path, monkeypatch):
    matrix = _module(monkeypatch)
    labels = tmp_path / "pair.npz"
    np.savez(labels, noisy_targets=np.array([1, 2]), clean_targets=np.array([0, 2]), noise_type=np.array("pairflip"))
    assert matrix.labels_noise_type(labels) == "pairflip"

    def rec(method, rate, noise_type, accs):
        return {"method": method, "noise_rate": rate, "noise_type": noise_type, "last": accs}

    records = [rec("ce", 0.5, "symmetric", [80.0, 82.0, 84.0]), rec("ce", 0.45, "pairflip", [72.0]),
               rec("ce", 0.2, "symmetric", [87.0]), rec("ce", None, "human", [81.0]),
               rec("gce", 0.5, "symmetric", []), rec("gce", 0.2, "symmetric", [88.0, 86.0])]
    lines = matrix.curves(records)
    assert set(lines) == {("ce", "symmetric"), ("ce", "pairflip"), ("gce", "symmetric")}
    assert lines[("ce", "symmetric")] == [(0.2, 87.0, 0.0), (0.5, 82.0, 2.0)]  # by rate; sample std of 80, 82, 84
    assert lines[("ce", "pairflip")] == [(0.45, 72.0, 0.0)]
    assert lines[("gce", "symmetric")] == [(0.2, 87.0, pytest.approx(2 ** 0.5))]
    matrix.plot(records, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


MATRIX_FILES = sorted((REPO / "scripts" / "matrix").glob("*.yaml"))


@pytest.mark.parametrize("path", MATRIX_FILES, ids=[p.name for p in MATRIX_FILES])
def test_every_method_of_a_committed_matrix_parses_as_train_py_would_run_it(path, tmp_path, monkeypatch):
    """A typo in a method's arguments or config stack fails here, not hours into a matrix run."""
    from train import main

    matrix = _module(monkeypatch)
    spec = matrix.load_matrix(path)
    spec["configs"] = [str(REPO / c) for c in spec["configs"]]
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)  # nothing is read: the data folder is empty, the encoder is not loaded
    checked = set()
    for cell in matrix.cells(spec):
        if cell.method["name"] in checked:
            continue
        method = {**cell.method, "configs": [str(REPO / c) for c in cell.method.get("configs", [])]}
        args = matrix.base_args(spec, cell.row, method) + [
            "--data.init_args.data_dir", str(tmp_path), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--model.init_args.init_from", "null", "--trainer.logger", "false"]
        cli = main(args, run=False)
        assert cli.model.hparams.get("loss", "ce") == ("gce" if "gce" in cell.method["name"] else "ce"), cell.method
        checked.add(cell.method["name"])
    assert checked == {m["name"] for m in spec["methods"]}
