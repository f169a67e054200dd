"""One spelling per class path: every callback is exported from ``callbacks`` and configs and docs
name it ``callbacks.<Name>``."""

from __future__ import annotations

import ast
import re

import callbacks
from conftest import REPO

CALLBACK_BASES = ("Callback", "ModelCheckpoint", "CheckpointIO")


def callback_classes() -> dict[str, str]:
    """Callback (and checkpoint plugin) classes defined in callbacks/, by name -> module file."""
    found = {}
    for path in sorted((REPO / "callbacks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith(CALLBACK_BASES) for b in node.bases):
                found[node.name] = path.name
    return found


def test_every_callback_is_exported():
    classes = callback_classes()
    assert {"ConfusionMatrix", "PeriodicCheckpoint", "ExactResume", "KNNMonitor"} <= set(classes)
    missing = sorted(set(classes) - set(callbacks.__all__))
    assert not missing, f"callbacks/__init__.py does not export {missing}"
    for name, module in classes.items():
        assert getattr(callbacks, name).__module__ == f"callbacks.{module[:-3]}"


LONG_SPELLING = re.compile(r"\bcallbacks\.[a-z_]+\.[A-Z]\w+|\blightning_modules\.performance\.Performance\b")


def test_configs_and_docs_use_the_short_spelling():
    files = [*REPO.glob("configs/**/*.yaml"), *REPO.glob("tests/configs/*.yaml"), *REPO.glob("docs/*.md"),
             REPO / "README.md", *REPO.glob("scripts/**/*.py"), *REPO.glob("scripts/**/*.yaml")]
    assert len(files) > 20
    long = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in files for m in LONG_SPELLING.finditer(p.read_text())]
    assert not long, "use callbacks.<Name>:\n" + "\n".join(long)


def test_a_saved_config_with_an_old_class_path_still_runs(tmp_path, monkeypatch):
    """config.yaml files of runs made before the renames name callbacks by their old module paths."""
    import sys

    import train
    from callbacks.periodic_checkpoint import PeriodicCheckpoint

    assert set(train.RENAMED_MODULES) >= {"callbacks.fault_tolerance", "datamodules.run_state",
                                        "lightning_modules.performance"}
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "old.yaml"
    old.write_text("trainer:\n  callbacks:\n    - class_path: callbacks.fault_tolerance.PeriodicCheckpoint\n"
                   "      init_args: {every_n_train_steps: 7}\n")
    cli = train.main(["--config", str(REPO / "tests" / "configs" / "tiny.yaml"), "--config", str(old),
                      "--data.init_args.data_dir", str(tmp_path), "--trainer.logger", "false"], run=False)
    periodic = [cb for cb in cli.trainer.callbacks if isinstance(cb, PeriodicCheckpoint)]
    assert len(periodic) == 1 and periodic[0]._every_n_train_steps == 7
