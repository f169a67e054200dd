"""Register the run's hyper-parameters with the metrics to compare in TensorBoard's HParams view.

Lightning already logs the model's and datamodule's ``save_hyperparameters``
(merged) through ``TensorBoardLogger.log_hyperparams`` at the start of fit,
and stores them in ``hparams.yaml``. What it registers as *metrics* of the
HParams view is only ``hp_metric`` (``default_hp_metric=True``), or nothing.
Lightning's documented remedy (``log_hyperparams(params, metrics={...})`` with
initial values) also writes those placeholder values as scalars at step 0,
which would put a fake point on every learning curve. This callback writes the
same three summaries Lightning writes (``torch.utils.tensorboard.summary.hparams``)
with the metric names only, no scalars; the real values are the ordinary
scalars the run logs under the same tags (``val/acc``, ``test/acc``, ...).

Use it with ``default_hp_metric: false`` on the logger (configs/inspect.yaml),
so that the run carries one HParams record.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

DEFAULT_METRICS = (
    "train/loss", "val/acc", "val/f1", "test/acc", "test/f1", "test_best/acc", "test_best/f1", "noise/loss_auroc",
)


def flatten_hparams(params: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested mapping -> ``{"a/b": value}`` with values TensorBoard accepts (others as ``str``)."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            flat[name] = value.item()
        else:
            flat[name] = str(value)
    return flat


class HParamsMetrics(Callback):
    """Registers ``metrics`` (tags of scalars the run logs) in the HParams view, with the run's hparams.

    Args:
        metrics: scalar tags to show as HParams columns.
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS):
        super().__init__()
        if not metrics or any(not isinstance(m, str) or not m for m in metrics):
            raise ValueError(f"metrics must be a non-empty list of scalar tags, got {metrics!r}")
        self.metrics = list(metrics)
        self.logged: dict[str, Any] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:
            warnings.warn(f"{type(self).__name__}: no TensorBoardLogger on the trainer; HParams not registered")
            return
        if getattr(logger, "_default_hp_metric", False):
            warnings.warn(
                f"{type(self).__name__}: the TensorBoardLogger has default_hp_metric=True, so the run also has "
                "Lightning's hp_metric record; set trainer.logger.init_args.default_hp_metric: false"
            )
        # logger.hparams: what Lightning logged at fit start (model + datamodule hparams)
        params = flatten_hparams(dict(logger.hparams))
        exp, ssi, sei = hparams(params, {m: 0.0 for m in self.metrics})  # values unused: names only
        writer = logger.experiment._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        writer.flush()
        self.logged = params
