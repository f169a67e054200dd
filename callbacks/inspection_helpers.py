"""Shared helpers of the inspection callbacks: where to log, figures -> images, un-normalising.

Every callback logs to TensorBoard through the trainer's logger and writes
files into the run folder (``trainer.log_dir``); with another logger (or none)
the TensorBoard part is skipped with one warning and the files are still written.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

from datamodules import contracts  # noqa: E402
from lightning_modules.method_base import MethodBase  # noqa: E402

_warned: set[str] = set()


def tensorboard_writer(trainer: pl.Trainer, who: str):
    """The TensorBoard ``SummaryWriter`` of the trainer, or None (warned once per callback) otherwise."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    if who not in _warned:
        _warned.add(who)
        warnings.warn(f"{who}: no TensorBoardLogger on the trainer; images and text are not logged (files still are)")
    return None


def local_log_dir(trainer: pl.Trainer) -> str | None:
    """What ``trainer.log_dir`` returns, read on this process only.

    ``trainer.log_dir`` broadcasts rank 0's value, a collective that every process
    must enter; asked after an ``is_global_zero`` guard it makes rank 0 wait forever.
    On rank 0 this is the same folder, without the broadcast.
    """
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    return logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir


def output_dir(trainer: pl.Trainer) -> Path | None:
    """The run folder (``trainer.log_dir``) as a created folder, None when there is none.

    No collective: safe to call on rank 0 alone (the files are written there only).
    """
    log_dir = local_log_dir(trainer)
    if log_dir is None:
        return None
    out = Path(log_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def figure_to_array(fig: plt.Figure) -> np.ndarray:
    """Render a matplotlib figure to an RGB uint8 array [H, W, 3]."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def log_figure(
    trainer: pl.Trainer, who: str, tag: str, fig: plt.Figure, png_name: str | None = None
) -> np.ndarray:
    """Log ``fig`` as a TensorBoard image at the current global step, optionally save it as a PNG, close it."""
    image = figure_to_array(fig)
    if trainer.is_global_zero:
        writer = tensorboard_writer(trainer, who)
        if writer is not None:
            writer.add_image(tag, image, trainer.global_step, dataformats="HWC")
        out = output_dir(trainer)
        if png_name and out is not None:
            fig.savefig(out / png_name, dpi=fig.dpi)
    plt.close(fig)
    return image


def denormalize(images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Undo ``(x - mean) / std`` for display, clamped to [0, 1]; without mean/std min-max scale each image."""
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * s + m).clamp(0, 1)
    return scale_each(x)


def scale_each(x: torch.Tensor) -> torch.Tensor:
    """Min-max scale every item of a batch [N, ...] to [0, 1] on its own (constant items -> 0.5)."""
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(1e-12)
    out = (flat - lo[:, None]) / span[:, None]
    out[hi - lo < 1e-12] = 0.5
    return out.reshape(x.shape)


def class_names_of(trainer: pl.Trainer, num_classes: int) -> list[str]:
    """``trainer.datamodule.class_names`` when it has the right length, else ``"0".."C-1"``."""
    names = trainer.datamodule.class_names if contracts.offers(trainer.datamodule, "class_names") else None
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def num_classes_of(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Class count from the datamodule (``num_classes``) or the module's ``hparams.num_classes``."""
    dm = trainer.datamodule
    c = dm.num_classes if contracts.offers(dm, "num_classes") else pl_module.hparams.get("num_classes")
    if not c:
        raise ValueError("cannot tell the number of classes: neither datamodule.num_classes nor hparams.num_classes")
    return int(c)


def test_prefix_of(pl_module: pl.LightningModule) -> str:
    """The prefix of the test run in progress (``test``, or ``test_best`` when train.py tests the best
    checkpoint): a method's declared ``test_prefix``; ``test`` for any other module."""
    return pl_module.test_prefix if isinstance(pl_module, MethodBase) else "test"


def first_network(pl_module: pl.LightningModule) -> torch.nn.Module | None:
    """The (first) network a method trains, or None for a module that is not one of this framework's."""
    return next(iter(pl_module.networks().values())) if isinstance(pl_module, MethodBase) else None


def logits_from(outputs, pl_module: pl.LightningModule, batch: dict) -> torch.Tensor:
    """The batch's logits: ``outputs["logits"]`` when the step returned them (free), else one forward pass."""
    if isinstance(outputs, dict) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"].detach()
    with torch.no_grad():
        return pl_module(batch[contracts.IMAGE]).detach()
