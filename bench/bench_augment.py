#!/usr/bin/env python
"""Images/s of the batched augmentation path against the per-sample torchvision pipeline.

(a) what training does here: a DataLoader over ``IndexedTensorDataset`` hands out a
    shuffled batch gathered from the uint8 tensor [N, 3, 32, 32] in one indexing op
    (num_workers 0), then ``augment.CropFlip`` crops (4 px reflect padding), flips and
    normalises the whole batch at once (on the CPU here, as on a GPU in training);
(b) the usual per-sample pipeline: a Dataset of HWC uint8 arrays turned into PIL
    images, ``RandomCrop(32, 4, padding_mode="reflect")``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize``, default collate, in a DataLoader with one worker per core.

Both use batch size 128 and go over the same images in the same run; the ratio
(a)/(b) is printed. Uses the real CIFAR-10 training set when ``--data-dir`` holds
``cifar-10-batches-py`` (default ``data``), else random uint8 images.

    python bench/bench_augment.py [--data-dir data] [--images 20000] [--repeats 3] [--threads N]

On a shared, oversubscribed CPU torch's OpenMP threads can spin-wait on each
other and slow the batched path by 10x; ``--threads 1`` shows that case.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules import augment, cifar_source  # noqa: E402
from datamodules.batches import IndexedTensorDataset, keep_batch  # noqa: E402


def load_images(data_dir: Path, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    folder = data_dir / cifar_source.CIFAR10.folder
    if folder.is_dir():
        split = cifar_source.read_split(cifar_source.CIFAR10, folder, train=True)
        return split.images[:n].contiguous(), split.labels[:n].contiguous(), f"real CIFAR-10 ({folder})"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g), "random uint8 images (no CIFAR-10 folder found)"


class PILDataset(Dataset):
    """torchvision-style CIFAR dataset: one PIL image per __getitem__."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def bench_batched(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    ds = IndexedTensorDataset(images, labels, labels)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0, collate_fn=keep_batch)
    transform = augment.CropFlip(augment.CIFAR10_MEAN, augment.CIFAR10_STD)
    n, start = 0, time.perf_counter()
    for batch in loader:
        x = transform(batch["image"])
        n += len(x)
    return n / (time.perf_counter() - start)


def bench_torchvision(images: torch.Tensor, labels: torch.Tensor, batch_size: int, workers: int) -> float:
    import torchvision.transforms as T

    transform = T.Compose([
        T.RandomCrop(32, padding=4, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(augment.CIFAR10_MEAN, augment.CIFAR10_STD),
    ])
    ds = PILDataset(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers)
    n, start = 0, time.perf_counter()  # worker start-up included: it is part of every epoch without persistence
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1] / "data"))
    parser.add_argument("--images", type=int, default=20_000, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="torchvision loader workers")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs of each")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the batched path (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    images, labels, source = load_images(Path(args.data_dir), args.images)
    print(f"data: {source}, {len(images)} images; batch {args.batch_size}; torch threads {torch.get_num_threads()}; "
          f"torchvision workers {args.workers}; {os.cpu_count()} CPUs; best of {args.repeats}")
    bench_batched(images[:1024], labels[:1024], args.batch_size)  # warm-up (first-call allocations)
    batched = max(bench_batched(images, labels, args.batch_size) for _ in range(args.repeats))
    tv = max(bench_torchvision(images, labels, args.batch_size, args.workers) for _ in range(args.repeats))
    print(f"(a) batched uint8 gather + CropFlip/normalise (CPU): {batched:10.0f} images/s")
    print(f"(b) torchvision per-sample PIL pipeline, {args.workers} workers: {tv:10.0f} images/s")
    print(f"ratio (a)/(b): {batched / tv:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    main()
