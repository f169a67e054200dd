#!/usr/bin/env python
"""Training throughput of CoTeaching against two Classifier trainings on the same backbone and batch.

    OMP_NUM_THREADS=1 python bench/bench_coteaching.py            # 9-layer CNN at width 0.25, batch 128
    python bench/bench_coteaching.py --width 1.0 --batches 20 --device cuda

Co-teaching pushes every batch through two networks, so the fair reference is two
plain CE steps (Classifier) of the same backbone on the same batch. Both run through a
real Lightning Trainer (manual vs automatic optimisation, Adam both), on the same
in-memory synthetic batches, timed from the first batch of the second epoch (so that
co-teaching selects with R = 0.5, not the R(0) = 0 of the first epoch) to the end.
Repeats alternate the two methods (ABAB...) and the median is reported, which matters on a
shared machine. Target: selection + cross update cost < 10% on top.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules import Classifier, CoTeaching  # noqa: E402
from lightning_modules import coteaching_selection as sel  # noqa: E402
from lightning_modules.backbones import CNN  # noqa: E402


class RandomBatches(Dataset):
    """Normalised-looking float images with random labels; batches by one gather."""

    def __init__(self, n: int, num_classes: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return {"image": self.x[idx], "target": self.y[idx], "clean_target": self.y[idx], "index": idx}


class EpochTimer(pl.Callback):
    """Wall time of training epoch 1 (the second one), from its first batch start to its end."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.seconds = time.perf_counter() - self.start


def timed_fit(model: pl.LightningModule, loader: DataLoader, batches: int, device: str) -> float:
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=batches, accelerator=device, devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=loader)
    return timer.seconds


def selection_seconds(batch_size: int, num_classes: int = 10, reps: int = 2000) -> float:
    """Seconds per batch of the co-teaching-specific work alone: per-sample CE of both networks'
    logits, two small-loss selections, the cross-update losses and the label-precision counts."""
    g = torch.Generator().manual_seed(0)
    logits1 = torch.randn(batch_size, num_classes, generator=g)
    logits2 = torch.randn(batch_size, num_classes, generator=g)
    y, clean = torch.randint(0, num_classes, (batch_size,), generator=g), torch.randint(0, num_classes, (batch_size,))
    t0 = time.perf_counter()
    for _ in range(reps):
        l1 = torch.nn.functional.cross_entropy(logits1, y, reduction="none")
        l2 = torch.nn.functional.cross_entropy(logits2, y, reduction="none")
        p1, p2 = sel.cross_selection(l1, l2, 0.5)
        sel.cross_update_losses(l1, l2, p1, p2)
        (y[p1] == clean[p1]).float().mean(), (y[p2] == clean[p2]).float().mean()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.25, help="CNN width multiplier (1.0 = the paper's net)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=15, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=3, help="0: only the selection micro-benchmark")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    pl.seed_everything(0, verbose=False)
    data = RandomBatches(args.batches * args.batch_size)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=lambda b: b)

    def coteaching() -> float:
        model = CoTeaching(CNN(n_outputs=10, width=args.width), forget_rate=0.5, num_gradual=1, epoch_decay_start=2)
        return timed_fit(model, loader, args.batches, args.device)

    def two_classifiers() -> float:
        return sum(timed_fit(Classifier(CNN(n_outputs=10, width=args.width)), loader, args.batches, args.device)
                   for _ in range(2))

    t_sel = selection_seconds(args.batch_size)
    print(f"selection + cross update alone: {1e6 * t_sel:.0f} us per batch of {args.batch_size}")
    if args.repeats == 0:
        return
    ct, ref = [], []
    for _ in range(args.repeats):
        ct.append(coteaching())
        ref.append(two_classifiers())
    images = args.batches * args.batch_size
    t_ct, t_ref = statistics.median(ct), statistics.median(ref)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, CNN width {args.width}, "
          f"batch {args.batch_size}, {args.batches} timed batches, {args.repeats} repeats (median)")
    print(f"CoTeaching (2 networks, selection, cross update): {images / t_ct:8.1f} images/s  ({t_ct:.2f} s)")
    print(f"2 x Classifier (same backbone and batches):       {images / t_ref:8.1f} images/s  ({t_ref:.2f} s)")
    print(f"overhead of co-teaching: {100 * (t_ct / t_ref - 1):+.1f}%  (target < 10%); the selection alone is "
          f"{100 * t_sel * args.batches / t_ref:.2f}% of the reference time")
    print(f"all runs, s: coteaching {[round(t, 2) for t in ct]}, 2 x classifier {[round(t, 2) for t in ref]}")


if __name__ == "__main__":
    main()
