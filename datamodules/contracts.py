"""What passes between datamodules, methods and callbacks, written down in one place.

Three contracts:

- **Batches** a datamodule's loaders yield (after ``on_after_batch_transfer``): :class:`Batch`;
  two augmented views for DivideMix (``image2``); :class:`MetaBatch` when a clean meta set is served
  (Meta-Weight-Net); :class:`ViewsBatch` for contrastive pretraining.
- **Step outputs** a method's ``training_step`` returns and callbacks read
  (``on_train_batch_end``'s ``outputs``): :class:`TrainStepOutput`; evaluation steps return
  :class:`EvalStepOutput`.
- **What a noisy datamodule offers** to methods and callbacks: :class:`NoisyData`. Code that needs
  one of these attributes asks :func:`require`, which fails once with a message that names the
  attribute, who needs it and which datamodule lacks it, instead of a ``getattr`` default that quietly
  switches a feature off.

The key names are constants so that a rename is one edit that every user follows.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, runtime_checkable

import torch
from torch.utils.data import DataLoader

# ----------------------------------------------------------------- batches
IMAGE, IMAGE2, TARGET, CLEAN_TARGET, INDEX = "image", "image2", "target", "clean_target", "index"
TRAIN, META = "train", "meta"
VIEW1, VIEW2 = "view1", "view2"


class Batch(TypedDict, total=False):
    """One batch of labelled images.

    ``target`` is the label trained on (noisy in training, as configured in validation, true at
    test); ``clean_target`` is the true label, for logging only: no method may train on it.
    ``index`` is the position in the full training set (per-sample statistics). ``image2``: a second
    augmented view (``crop_flip_twice``).
    """

    image: torch.Tensor
    image2: torch.Tensor
    target: torch.Tensor
    clean_target: torch.Tensor
    index: torch.Tensor


class MetaBatch(TypedDict):
    """A training batch plus a batch of the clean meta set (whose ``target`` is the clean label)."""

    train: Batch
    meta: Batch


class ViewsBatch(TypedDict):
    """Two augmented views of the same images (contrastive pretraining); no labels."""

    view1: torch.Tensor
    view2: torch.Tensor


def training_part(batch: Batch | MetaBatch) -> Batch:
    """The batch a training step's per-sample outputs refer to: a plain batch itself, a
    :class:`MetaBatch` its ``train`` part."""
    if IMAGE not in batch and TRAIN in batch:
        return batch[TRAIN]  # type: ignore[typeddict-item]
    return batch  # type: ignore[return-value]


# ------------------------------------------------------------ step outputs
class TrainStepOutput(TypedDict, total=False):
    """What a method's ``training_step`` returns.

    ``loss``: what Lightning backpropagates (absent when the method steps its optimisers itself);
    ``per_sample_loss`` [B] and ``logits`` [B, C] (detached) of the network whose loss is reported,
    for the training batch's samples in batch order: what the noise diagnostics track.
    """

    loss: torch.Tensor
    per_sample_loss: torch.Tensor
    logits: torch.Tensor


class EvalStepOutput(TypedDict):
    """What ``validation_step`` / ``test_step`` return: the logits the metrics were computed from."""

    logits: torch.Tensor


def has_per_sample_outputs(outputs: Any) -> bool:
    """Whether a training step's output carries what per-sample tracking needs."""
    return isinstance(outputs, dict) and "per_sample_loss" in outputs and "logits" in outputs


# ------------------------------------------------------- what data offers
@runtime_checkable
class NoisyData(Protocol):
    """What a noisy-label datamodule offers after ``setup`` (``datamodules.NoisyDataModule`` does).

    Labels are indexed by position in the full training set: ``noisy_targets[i]`` is sample ``i``'s
    given label, ``clean_targets[i]`` its true one, ``noise_selected[i]`` whether the noise process
    touched it. ``train_indices`` / ``val_indices`` say which samples each split uses.
    """

    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    noisy_targets: torch.Tensor
    clean_targets: torch.Tensor
    noise_selected: torch.Tensor
    actual_noise_rate: float
    train_indices: torch.Tensor
    val_indices: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def training_images(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def train_eval_dataloader(self) -> DataLoader: ...


class MissingDataError(AttributeError, ValueError):
    """The run's datamodule lacks something a method or callback needs: an attribute error, and a
    configuration error (a ValueError), so that train.py reports it as one ``error:`` line like the
    other bad-input errors instead of a traceback."""


def require(datamodule: Any, name: str, user: str) -> Any:
    """``datamodule.name``, or one clear error naming the attribute, ``user`` and the datamodule.

    Use for what a feature cannot do without; a feature that is optional checks :func:`offers`.
    """
    value = getattr(datamodule, name, None) if datamodule is not None else None
    if value is None:
        what = "no datamodule" if datamodule is None else f"{type(datamodule).__name__} (set up: has no {name!r})"
        raise MissingDataError(
            f"{user} needs the datamodule's {name!r} (see datamodules/contracts.py NoisyData); this run has {what}"
        )
    return value


def offers(datamodule: Any, name: str) -> bool:
    """Whether the datamodule has ``name`` set (not None)."""
    return datamodule is not None and getattr(datamodule, name, None) is not None
