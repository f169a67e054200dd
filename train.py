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
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.model_helpers import is_overridden

from callbacks.atomic_checkpoint import with_atomic_checkpoint_io
from callbacks.best_and_last import BestAndLastCheckpoint
from callbacks.exact_resume import ExactResume


class NoisyLabelCLI(LightningCLI):
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
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        """Checkpoints are written atomically unless the config names its own CheckpointIO plugin."""
        plugins = kwargs.get("plugins", self._get(self.config_init, "trainer", default={}).get("plugins"))
        kwargs["plugins"] = with_atomic_checkpoint_io(plugins)
        return super().instantiate_trainer(**kwargs)

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
        log_dir = trainer.log_dir  # a collective under DDP: every process must ask, not only rank 0
        if trainer.is_global_zero and log_dir:
            out = Path(log_dir) / "test_results.json"
            out.write_text(json.dumps(results, indent=2))
            for prefix, r in results.items():
                acc = r.get(f"{prefix}/acc")
                if acc is not None:
                    print(f"{prefix}: acc {acc:.4f}  macro-F1 {r.get(f'{prefix}/f1', float('nan')):.4f}  ({r['checkpoint']})")


def main(args: list[str] | None = None, run: bool = True) -> NoisyLabelCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only instantiates (tests)."""
    return NoisyLabelCLI(
        model_class=pl.LightningModule,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
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
    )


if __name__ == "__main__":
    main()
