"""Speed knobs for any LightningModule here, applied in one place: ``channels_last`` and ``torch.compile``.

A Callback rather than init arguments, so that Classifier, CoTeaching, SimCLR,
MetaWeightNet... stay free of it and a YAML switches it on for all of them::

    trainer:
      callbacks:
        - class_path: callbacks.Performance
          init_args: {channels_last: true, compile: true}

(the third knob, keeping the dataset on the GPU, is the datamodule's
``resident_on_device``: it is about data, not the model).

* ``channels_last``: the backbones' weights (and every 4-D float tensor of each
  batch: ``image``, SimCLR's views) in NHWC layout, which cuDNN's tensor-core
  convolutions prefer under mixed precision. Parameters keep their identity
  (``module.to(memory_format=...)`` rewrites ``.data``), so optimisers built
  later or earlier are unaffected; checkpoints load either way.
* ``compile``: ``nn.Module.compile()`` on each backbone's encoder (``features``)
  *in place*: the state dict keeps its keys (``torch.compile(module)`` would
  prefix them with ``_orig_mod.`` and break checkpoints between compiled and
  plain runs). Applied when fitting (testing, ...) starts, on the module's
  device. A module with a ``compile_refusal`` (Meta-Weight-Net: double
  backward) is refused with that reason before training.

The backbones are the module's ``networks()`` (a ``method_base.MethodBase``:
``backbone``, or ``net1``/``net2``), else its direct children that are
``backbones.Backbone`` instances, or the children named in ``modules``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from lightning_modules.backbones import Backbone
from lightning_modules.method_base import find_backbones


def compile_target(module: nn.Module) -> nn.Module:
    """What to compile of a backbone: its encoder ``features``, which every method calls (SimCLR and
    the kNN monitor call ``backbone.features`` directly, bypassing the backbone's own ``__call__``);
    any other module as a whole."""
    return module.features if isinstance(module, Backbone) else module


def to_channels_last(batch: Any) -> Any:
    """Every 4-D floating tensor of a (nested) dict/list batch in channels_last layout, in place for dicts."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        for k, v in batch.items():
            batch[k] = to_channels_last(v)
        return batch
    if isinstance(batch, list):
        batch[:] = [to_channels_last(v) for v in batch]
    return batch


class Performance(pl.Callback):
    """channels_last and/or in-place ``torch.compile`` of the module's backbones (see module docstring).

    Args:
        channels_last: NHWC weights and images.
        compile: ``nn.Module.compile`` each backbone (first steps are slow: compilation).
        compile_mode: ``torch.compile`` mode (``default``, ``reduce-overhead``, ``max-autotune``).
        modules: attribute names of the modules to treat (default: every child ``Backbone``).
    """

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        modules: list[str] | None = None,
    ):
        allowed = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if compile_mode not in allowed:
            raise ValueError(f"unknown compile_mode {compile_mode!r}; allowed: {', '.join(map(str, allowed[1:]))}")
        self.channels_last, self.compile = channels_last, compile
        self.compile_mode, self.modules = compile_mode, modules
        self.applied_to: list[str] = []
        self.compiled = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """channels_last: before ``configure_optimizers`` and a checkpoint restore (both work either way)."""
        if self.applied_to:
            return
        refusal = getattr(pl_module, "compile_refusal", None)
        if self.compile and refusal:
            raise ValueError(
                f"Performance(compile=True) cannot be used with {type(pl_module).__name__}: {refusal}; "
                "set compile: false (channels_last and mixed precision still apply)"
            )
        for name, module in find_backbones(pl_module, self.modules).items():
            if self.channels_last:
                module.to(memory_format=torch.channels_last)
            self.applied_to.append(name)

    def _compile(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compile once the module sits on its device, right before the first real batch.

        Not in ``setup``: the module's own ``setup`` runs after the callbacks' and probes each
        backbone with a forward pass on the CPU (``method_base.check_backbone``); a backbone compiled
        by then is compiled once more, for that probe, on every process.
        """
        if not self.compile or self.compiled:
            return
        for module in find_backbones(pl_module, self.modules).values():
            compile_target(module).compile(mode=self.compile_mode)
        self.compiled = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(trainer, pl_module)

    def _batch(self, batch: Any) -> None:
        if self.channels_last:
            to_channels_last(batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(batch)
