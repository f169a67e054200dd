"""Data loaders whose order is a pure function of (seed, epoch) and that can restart mid-epoch.

Why: Lightning 2.6 restores the loop position of a checkpoint saved mid-epoch
(``batch_progress``) but not the order of the data: a plain ``RandomSampler``
draws a new permutation from the global RNG, so the rest of the epoch would
see other images than the uninterrupted run (and Lightning warns "your
dataloader is not resumable"). Lightning does save and restore any training
loader that has ``state_dict`` / ``load_state_dict`` (``_FitLoop`` ->
``CombinedLoader._state_dicts``), before it iterates it. So:

* :class:`EpochShuffleSampler` is a ``DistributedSampler`` (Lightning then leaves
  it alone under DDP instead of wrapping it) whose permutation depends only on
  ``(seed, epoch, pass)``: identical on every process and in every restart.
  ``pass`` counts re-iterations within an epoch, so a loader that is cycled
  (the meta loader of a ``max_size_cycle`` CombinedLoader) gets a new order each
  cycle, as it would with a ``RandomSampler``.
* :class:`ResumableDataLoader` counts the batches it has handed out in the
  current pass; its state ``{epoch, pass, batches}`` goes into the checkpoint,
  and after ``load_state_dict`` the next pass of that epoch skips the batches
  already trained on. Lightning does not prefetch from a sized loader, so the
  count equals the number of batches the training loop consumed.
* :func:`eval_sampler` gives validation/test loaders an *unrepeated*
  distributed sampler: a ``DistributedSampler`` pads the last batch with
  duplicates, which would make a 2-process validation accuracy differ from the
  single-process value.

The shuffle seed is Lightning's global seed (``seed_everything`` / the CLI's
``seed_everything``, read from ``PL_GLOBAL_SEED``), the same seed Lightning
gives its own ``DistributedSampler``.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Iterator

import numpy as np
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def global_seed() -> int:
    """The seed of ``seed_everything`` (0 when it was never called), as Lightning's samplers use it."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochShuffleSampler(DistributedSampler):
    """Shuffled indices of this process's share; the order depends only on ``(seed, epoch, pass)``.

    With ``num_replicas=1`` it is a seeded ``RandomSampler``. ``skip`` of the
    first pass of ``resume_epoch`` is set by :meth:`resume` (from a checkpoint).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.pass_index = 0  # how many passes over the data have started in this epoch
        self._resume: tuple[int, int, int] | None = None  # (epoch, pass, samples to skip)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.pass_index = 0
        super().set_epoch(epoch)

    def permutation(self, epoch: int, pass_index: int) -> list[int]:
        """This process's indices for one pass (before any skipping)."""
        entropy = np.random.SeedSequence([self.seed, epoch, pass_index]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
        indices = torch.randperm(len(self.dataset), generator=g).tolist()
        if self.drop_last:
            indices = indices[: self.total_size]
        else:
            indices += indices[: self.total_size - len(indices)]  # pad like DistributedSampler
        return indices[self.rank : self.total_size : self.num_replicas]

    def resume(self, epoch: int, pass_index: int, skip_samples: int) -> None:
        """Make the next pass of ``epoch`` be pass ``pass_index`` without its first ``skip_samples`` indices."""
        self._resume = (epoch, pass_index, skip_samples)

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume is not None:
            epoch, pass_index, skip_samples = self._resume
            self._resume = None
            if epoch == self.epoch:  # a checkpoint from the end of an epoch leads to the next one: no skip
                self.pass_index, skip = pass_index, skip_samples
        indices = self.permutation(self.epoch, self.pass_index)
        self.pass_index += 1
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochShuffleSampler` whose position Lightning checkpoints.

    ``len()`` stays the full epoch length after a resume: Lightning counts the
    batches already done (``batch_progress``) and stops when ``fetched == len``.
    """

    sampler: EpochShuffleSampler

    def __iter__(self) -> Iterator[Any]:
        if not isinstance(self.sampler, EpochShuffleSampler):  # e.g. Lightning replaced it (overfit_batches)
            yield from super().__iter__()
            return
        pending = self.sampler._resume
        skipped = 0
        if pending is not None and pending[0] == self.sampler.epoch:
            skipped = pending[2] // self._batch_size()
        iterator = super().__iter__()
        self._served = skipped
        self._served_pass = self.sampler.pass_index  # __iter__ of the sampler has not run yet: this is its pass
        if pending is not None and pending[0] == self.sampler.epoch:
            self._served_pass = pending[1]
        for batch in iterator:
            self._served += 1
            yield batch

    def _batch_size(self) -> int:
        return int(self.batch_size or 1)

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": int(self.sampler.epoch),
            "pass": int(getattr(self, "_served_pass", 0)),
            "batches": int(getattr(self, "_served", 0)),
            "batch_size": self._batch_size(),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("batch_size") != self._batch_size():
            raise ValueError(
                f"cannot resume mid-epoch with batch_size {self._batch_size()}: the checkpoint was written with "
                f"batch_size {state.get('batch_size')} (resume with the same batch size and number of processes)"
            )
        self.sampler.resume(state["epoch"], state["pass"], state["batches"] * self._batch_size())


def eval_sampler(dataset: Dataset, num_replicas: int, rank: int) -> Sampler | None:
    """Every image exactly once over all processes (None: let the DataLoader go in order)."""
    if num_replicas <= 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


def process_grid(trainer: Any) -> tuple[int, int]:
    """(world size, global rank) of the attached trainer; (1, 0) without one."""
    if trainer is None:
        return 1, 0
    return int(trainer.world_size), int(trainer.global_rank)


def make_loader(
    dataset: Dataset,
    trainer: Any,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    resident_on_device: bool = False,
) -> DataLoader:
    """Training (``shuffle``) or evaluation loader for this process of ``trainer``.

    Every loader gets its own ``generator``: a ``DataLoader`` draws a base seed
    each time it is iterated, from the *global* RNG otherwise, which would make
    the augmentation and dropout draws depend on how many loaders were iterated
    (a resumed run iterates fewer).
    """
    world, rank = process_grid(trainer)
    if resident_on_device and trainer is not None:
        dataset = resident(dataset, trainer.strategy.root_device)
    on_host = not resident_on_device or trainer is None or trainer.strategy.root_device.type == "cpu"
    common = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available() and on_host,
        generator=torch.Generator().manual_seed(global_seed()),
    )
    if shuffle:
        sampler = EpochShuffleSampler(dataset, num_replicas=world, rank=rank, seed=global_seed())
        return ResumableDataLoader(dataset, sampler=sampler, drop_last=len(sampler) > batch_size, **common)
    return DataLoader(dataset, sampler=eval_sampler(dataset, world, rank), drop_last=False, **common)


# source tensor id -> (weak reference to the source, its copy on a device): train, val and meta
# datasets share the image tensor, and it should be copied to the device once
_DEVICE_COPIES: dict[tuple[int, str], tuple[weakref.ref, torch.Tensor]] = {}


def on_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor.to(device)``, made once per source tensor and device."""
    if tensor.device == device:
        return tensor
    for key in [k for k, (ref, _) in _DEVICE_COPIES.items() if ref() is None]:
        del _DEVICE_COPIES[key]
    key = (id(tensor), str(device))
    hit = _DEVICE_COPIES.get(key)
    if hit is not None and hit[0]() is tensor:
        return hit[1]
    copy = tensor.to(device)
    _DEVICE_COPIES[key] = (weakref.ref(tensor), copy)
    return copy


def resident(dataset: Any, device: torch.device) -> Any:
    """A copy of an ``IndexedTensorDataset`` whose tensors live on ``device``: batches are gathered there."""
    moved = object.__new__(type(dataset))
    moved.__dict__.update(
        {k: on_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in vars(dataset).items()}
    )
    return moved
