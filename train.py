#!/usr/bin/env python
"""Command line of the framework (LightningCLI).

    python train.py fit --config configs/quick.yaml
    python train.py test --config configs/quick.yaml --ckpt_path runs/.../last.ckpt
    python train.py fit --help

Model and data are chosen by ``class_path`` in YAML; every argument can be
overridden on the command line. After ``fit`` the test set is evaluated twice:
with the last checkpoint (``test/*``) and with the checkpoint of best *noisy*
validation accuracy (``test_best/*``); never by picking the best test epoch.
Both go to TensorBoard and to ``test_results.json`` next to the run's logs.

A configuration or data error found before training (a constructor check, the
data or the checkpoint named by the config) prints one ``error:`` line naming
the argument, the value and what is allowed, exits with code 2 and removes the
run folder it had created; ``--debug`` (or ``NOISY_DEBUG=1``) shows the full
traceback instead. A NaN or infinite training loss stops the run the same way
(exit code 1, run folder and its last good checkpoint kept; ``--finite_loss.enabled
false`` turns the check off: ``callbacks/finite_loss.py``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from types import TracebackType

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import TensorBoardLogger
from jsonargparse import ArgumentError
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.model_helpers import is_overridden

from callbacks.atomic_checkpoint import unreadable_checkpoint, with_atomic_checkpoint_io
from callbacks.best_and_last import BestAndLastCheckpoint
from callbacks.exact_resume import ExactResume
from callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from callbacks.held_logs import HeldLogs, ReleaseHeldLogs
from callbacks.hparams import HParamsMetrics
from callbacks.test_oracle import TestOracle
from callbacks.without_validation import NO_VALIDATION_NOTE, WithoutValidationSet, has_validation_set


#: module paths of the previous release -> where their contents live now. Configs saved by earlier runs
#: (their config.yaml) name classes by the old paths; kept importable for one release.
RENAMED_MODULES = {
    "callbacks.fault_tolerance": "callbacks.periodic_checkpoint",
    "callbacks.plotting": "callbacks.inspection_helpers",
    "datamodules.run_state": "datamodules.label_fingerprints",
    "lightning_modules.performance": "callbacks.performance",
    "lightning_modules.selection": "lightning_modules.coteaching_selection",
}


def alias_renamed_modules() -> None:
    """Make each old module path import its new module (``sys.modules``), without files left behind."""
    for old, new in RENAMED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


alias_renamed_modules()

DEBUG_FLAG = "--debug"
DEBUG_ENV = "NOISY_DEBUG"
INPUT_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 1
# exceptions that, raised before the first optimiser step, mean a bad configuration, data or checkpoint
INPUT_ERRORS = (ValueError, TypeError, KeyError, LookupError, OSError, RuntimeError, ImportError)
_WRAPPER_PACKAGES = (os.sep + "jsonargparse" + os.sep,)


class NoisyLabelCLI(LightningCLI):
    def __init__(self, *args, started: list | None = None, held_logs: "HeldLogs | None" = None, **kwargs):
        """``started``: a list this CLI appends itself to before parsing, so that ``main`` can clean up
        after an error raised inside the constructor (LightningCLI runs the subcommand there).
        ``held_logs``: Lightning's start-up lines, released when the run starts (``ReleaseHeldLogs``)."""
        self.run_folders: list[RunFolder] = []  # the loggers' folders as they were before the trainer ran
        self.held_logs = held_logs
        if started is not None:
            started.append(self)
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        """Usage errors are raised (and reported by ``main`` in one line), not printed after the full usage."""
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's merge of ``--ckpt_path``'s hyper-parameters into the model config, except:

        - a truncated or foreign file gets the same clear error as Lightning's own loading;
        - the checkpoint's ``backbone`` spec (saved for ``load_from_checkpoint``) is used only when the
          config names none: a backbone given in the config is built, and a checkpoint of another
          architecture is then a clear state-dict error instead of a silent switch of network.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        try:
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        except (RuntimeError, KeyError, ValueError, EOFError, OSError, pickle.UnpicklingError) as err:
            raise unreadable_checkpoint(ckpt_path, err) from err
        hparams = dict(ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {})
        hparams.pop("_instantiator", None)
        if self.config[subcommand].get("model.init_args.backbone") is not None:
            hparams.pop("backbone", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def _note_run_folders(self) -> None:
        self.run_folders = [RunFolder.before_run(lg) for lg in self.trainer.loggers if hasattr(lg, "root_dir")]

    before_fit = before_validate = before_test = before_predict = _note_run_folders

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(FiniteLossGuard, "finite_loss")
        parser.add_lightning_class_args(TestOracle, "test_oracle")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        """Checkpoints are written atomically unless the config names its own CheckpointIO plugin; the
        trainer also gets ``WithoutValidationSet`` (val_size 0), the HParams metrics of a TensorBoard run
        and the release of the held start-up lines."""
        plugins = kwargs.get("plugins", self._get(self.config_init, "trainer", default={}).get("plugins"))
        kwargs["plugins"] = with_atomic_checkpoint_io(plugins)
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks[:] = without_shadowed_defaults(trainer.callbacks, self.trainer_defaults.get("callbacks", []))
        trainer.callbacks.append(WithoutValidationSet(self._get(self.config_init, "checkpoint")))
        with_hparams_metrics(trainer)
        if self.held_logs is not None:
            trainer.callbacks.append(ReleaseHeldLogs(self.held_logs))
        return trainer

    def after_fit(self) -> None:
        trainer, model, dm = self.trainer, self.model, self.datamodule
        if trainer.interrupted or getattr(trainer, "fast_dev_run", False):
            return
        if not is_overridden("test_step", model):  # e.g. SimCLR: self-supervised, nothing to test
            return
        # the `checkpoint` group's ModelCheckpoint, not trainer.checkpoint_callback (the first one: it may be
        # a PeriodicCheckpoint from trainer.callbacks, which keeps no best model)
        ckpt = self._get(self.config_init, "checkpoint")
        results: dict[str, dict] = {}
        for prefix, path in (("test", ckpt.last_model_path), ("test_best", ckpt.best_model_path)):
            if not path:
                continue
            model.test_prefix = prefix
            metrics = trainer.test(model, datamodule=dm, ckpt_path=path, verbose=False)
            results[prefix] = {"checkpoint": path, **{k: float(v) for k, v in metrics[0].items()}}
        model.test_prefix = "test"
        if ckpt.best_model_score is not None:
            results.setdefault("test_best", {})["val_acc"] = float(ckpt.best_model_score)
        if not has_validation_set(dm):
            results["test_best"] = {"skipped": NO_VALIDATION_NOTE}
        oracle = self._get(self.config_init, "test_oracle").report()
        if oracle is not None:
            results["test_oracle_best"] = oracle
        log_dir = trainer.log_dir  # a collective under DDP: every process must ask, not only rank 0
        if trainer.is_global_zero and log_dir:
            out = Path(log_dir) / "test_results.json"
            out.write_text(json.dumps(results, indent=2))
            for prefix, r in results.items():
                acc = r.get(f"{prefix}/acc")
                if prefix == "test_oracle_best":
                    print(f"test_oracle_best: acc {r['acc']:.4f} at epoch {r['epoch']} (chosen on the test set: "
                          "NOT a valid model-selection number)")
                elif acc is not None:
                    f1 = r.get(f"{prefix}/f1", float("nan"))
                    print(f"{prefix}: acc {acc:.4f}  macro-F1 {f1:.4f}  ({r['checkpoint']})")


def without_shadowed_defaults(callbacks: list[pl.Callback], defaults: list[pl.Callback]) -> list[pl.Callback]:
    """``callbacks`` without each default (``trainer_defaults``) whose type the config lists itself.

    LightningCLI appends the defaults to a config's ``trainer.callbacks`` instead of replacing them,
    so a config that sets up its own ``LearningRateMonitor`` would otherwise log every rate twice;
    the config's own instance (its arguments) wins.
    """
    is_default = [any(cb is d for d in defaults) for cb in callbacks]
    configured = {type(cb) for cb, default in zip(callbacks, is_default) if not default}
    return [cb for cb, default in zip(callbacks, is_default) if not (default and type(cb) in configured)]


def with_hparams_metrics(trainer: pl.Trainer) -> None:
    """A TensorBoard run registers its real metrics (val/acc, test/acc, ...) in the HParams view
    (``callbacks.HParamsMetrics``) instead of Lightning's ``hp_metric`` placeholder of -1."""
    tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if not tensorboards:
        return
    for logger in tensorboards:
        logger._default_hp_metric = False  # what TensorBoardLogger(default_hp_metric=False) sets
    if not any(isinstance(cb, HParamsMetrics) for cb in trainer.callbacks):
        trainer.callbacks.append(HParamsMetrics())


class RunFolder:
    """A logger's run folder, and whether this run created it (then an input error removes it again)."""

    def __init__(self, logger, existing: set[str], created_dirs: list[Path]):
        self.logger, self.existing, self.created_dirs = logger, existing, created_dirs

    @classmethod
    def before_run(cls, logger) -> "RunFolder":
        # names only: resolving the logger's version here could differ between DDP processes
        root = Path(logger.root_dir)
        existing = {p.name for p in root.iterdir()} if root.is_dir() else set()
        missing = [d for d in (root, root.parent) if not d.exists()]
        return cls(logger, existing, missing)

    def remove_if_new(self) -> None:
        """Remove the run folder (and the parents) this run created; a folder that existed is kept."""
        if getattr(self.logger, "_version", None) is None:  # nothing was written: the version was never resolved
            return
        log_dir = Path(self.logger.log_dir)
        if log_dir.parent == Path(self.logger.root_dir) and log_dir.name not in self.existing and log_dir.is_dir():
            shutil.rmtree(log_dir, ignore_errors=True)
        for d in self.created_dirs:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def _raised_in_wrapper(err: BaseException) -> bool:
    tb: TracebackType | None = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and any(w in tb.tb_frame.f_code.co_filename for w in _WRAPPER_PACKAGES)


def user_message(err: BaseException) -> str:
    """The message of the check that failed, past jsonargparse's wrappers ("Does not validate against any
    of the Union subtypes ...", namespace dumps), prefixed with the argument's full key when the parser
    names it (``data.init_args.batch_size: Expected a <class 'int'>. Got value: many``)."""
    keys: list[str] = []
    in_class = False  # a "Problem with given class_path" between two keys: the inner key is an init_arg
    while True:
        key = _PARSER_KEY.match(str(err))
        if key and (not keys or keys[-1] != key.group(1)):
            keys += ["init_args", key.group(1)] if keys and in_class else [key.group(1)]
            in_class = False
        in_class = in_class or str(err).startswith(_CLASS_PATH)
        if not (_raised_in_wrapper(err) and isinstance(err.__cause__, Exception)):
            break
        err = err.__cause__
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    message = message.strip() or type(err).__name__
    return f"{'.'.join(keys)}: {message}" if keys else message


_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":')
_CLASS_PATH = "Problem with given class_path"


def _before_training(cli: NoisyLabelCLI | None) -> bool:
    trainer = getattr(cli, "trainer", None)
    return trainer is None or trainer.global_step == 0


def packaged_config(path: str) -> str:
    """``configs/X.yaml`` from the installed package when the working directory has no such file
    (``noisy-train`` after a non-editable ``pip install .``); any other path as it is."""
    if Path(path).exists() or not path.replace("\\", "/").startswith("configs/"):
        return path
    try:
        import configs
    except ImportError:
        return path
    packaged = Path(configs.__file__).parent / path.split("/", 1)[1]
    return str(packaged) if packaged.is_file() else path


def _with_packaged_configs(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = packaged_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + packaged_config(arg.split("=", 1)[1])
    return out


def _prepare_args(args: list[str] | None) -> tuple[list[str] | None, bool]:
    """Remove ``--debug`` and point ``--config configs/...`` at the packaged configs when needed.

    Command-line arguments are rewritten in ``sys.argv`` (LightningCLI warns when it gets ``args``
    while ``sys.argv`` holds arguments too)."""
    argv = sys.argv[1:] if args is None else list(args)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    cleaned = _with_packaged_configs([a for a in argv if a != DEBUG_FLAG])
    if args is not None:
        return cleaned, debug
    sys.argv[1:] = cleaned
    return None, debug


def main(args: list[str] | None = None, run: bool = True) -> NoisyLabelCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only instantiates (tests).

    An input error before training exits with code 2 after one ``error:`` line on stderr (see the
    module docstring); ``--debug`` anywhere on the command line, or ``NOISY_DEBUG=1``, re-raises it.
    """
    args, debug = _prepare_args(args)
    # the seed is in the run's config.yaml; the log line would come before an error message
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)
    started: list[NoisyLabelCLI] = []
    held = HeldLogs()
    if not debug:
        held.hold()
    try:
        cli = _run_cli(args, run, started, held)
        close_process_group()
        return cli
    except NonFiniteLossError as err:  # a diverged run: the message says where and which checkpoint is good
        if debug:
            raise
        _report(str(err))
        sys.exit(DIVERGED_EXIT_CODE)
    except ArgumentError as err:  # a usage error: unknown argument, wrong type, unknown class
        if debug:
            raise
        held.release(discard=True)
        _report(user_message(err), hint="see `train.py fit --help` for the arguments")
    except INPUT_ERRORS as err:
        cli = started[0] if started else None
        if debug or not _before_training(cli):
            raise
        held.release(discard=True)
        for folder in getattr(cli, "run_folders", []):
            folder.remove_if_new()
        _report(user_message(err))
    finally:
        held.release()
    sys.exit(INPUT_ERROR_EXIT_CODE)


def close_process_group() -> None:
    """Destroy the process group a DDP run left initialised (Lightning's teardown keeps it).

    Left to interpreter exit, gloo's worker threads are torn down with the interpreter and the process
    can abort (``terminate called without an active exception``, exit -6) after a finished run:
    https://github.com/pytorch/pytorch/issues/190489. Only after a run that ended normally: a rank that
    failed while the others wait in a collective would block here (pytorch/torchtitan#1342)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _report(message: str, hint: str = "") -> None:
    lines = [f"error: {message}"]
    if hint:
        lines.append(f"({hint})")
    lines.append(f"(run with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the full traceback)")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _run_cli(args: list[str] | None, run: bool, started: list, held: HeldLogs) -> NoisyLabelCLI:
    return NoisyLabelCLI(
        model_class=pl.LightningModule,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # optimisers and schedules are arguments of each method (two-optimiser methods build their own);
        # LightningCLI's top-level --optimizer/--lr_scheduler would replace configure_optimizers
        auto_configure_optimizers=False,
        trainer_defaults={
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "default"},
            },
            # ExactResume: RNG states + loader position restored on resume (callbacks/exact_resume.py)
            "callbacks": [LearningRateMonitor(logging_interval="epoch"), ExactResume()],
        },
        args=args,
        run=run,
        started=started,
        held_logs=held,
    )


def console_main() -> None:
    """``noisy-train``: ``main`` without its return value (a console script exits with what it returns)."""
    main()


if __name__ == "__main__":
    main()
